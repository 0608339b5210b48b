"""Binance Spot channel tables (wire-formats.md 1.4): plain data, no imports.

Kept apart from the parser and the description so both can use them without
importing each other.
"""

from __future__ import annotations

BINANCE_CHANNELS = ("trade", "aggTrade", "bookTicker")
# Binance kline intervals and their length in seconds ("1M", a calendar
# month, has no fixed length).
BINANCE_KLINE_SECONDS = {
    "1s": 1, "1m": 60, "3m": 180, "5m": 300, "15m": 900, "30m": 1800,
    "1h": 3600, "2h": 7200, "4h": 14400, "6h": 21600, "8h": 28800, "12h": 43200,
    "1d": 86400, "3d": 259200, "1w": 604800,
}  # fmt: skip
BINANCE_KLINE_INTERVALS = (*BINANCE_KLINE_SECONDS, "1M")
