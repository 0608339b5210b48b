"""Binance Spot, described once for the generic code (see providers/base.py).

Sources: wire-formats.md section 1. Channels (1.4): ``trade`` and
``aggTrade`` (trades, contiguous ids, 1.6: contiguity is inferred, and a
jump becomes a gap that REST refills by id, 1.7), ``bookTicker`` (quotes;
``u`` identifies an update and increases, with gaps: dedup only; no
history) and ``kline_<interval>`` (candles; no sequence, but a bar for every
interval, so a missing open time is a gap). Symbols (1.9): Unicode letters
and digits, sent lowercase in stream names (``mdagent/symbols.py``). The
connection plan (``plan.py``) keeps each connection within 1024 streams
(1.3). Defaults are the market-data-only hosts (1.1, 1.7).
"""

from __future__ import annotations

from mdagent.providers.base import Channel, Provider, SequenceRule, SymbolRule, channel_table
from mdagent.providers.binance.channels import BINANCE_KLINE_INTERVALS, BINANCE_KLINE_SECONDS
from mdagent.providers.binance.history import BinanceHistory
from mdagent.providers.binance.io import BinanceAdapter
from mdagent.providers.binance.listing import BinanceListing
from mdagent.symbols import binance_symbol_problem

_NS_PER_S = 1_000_000_000


# Unique ids, contiguous per symbol: a jump is an exact gap (1.6).
_IDS = SequenceRule(identifies=True, contiguous=True)


def _kline(interval: str) -> Channel:
    seconds = BINANCE_KLINE_SECONDS.get(interval)  # "1M" (a calendar month) has no fixed length
    rule = SequenceRule(candle_interval_ns=seconds * _NS_PER_S if seconds else None)
    return Channel(f"kline_{interval}", "candles", rule)


BINANCE = Provider(
    name="binance",
    title="Binance",
    channels=channel_table(
        [
            Channel("trade", "trades", _IDS),
            Channel("aggTrade", "trades", _IDS),
            Channel("bookTicker", "quotes", SequenceRule(identifies=True), history=False),
            *(_kline(interval) for interval in BINANCE_KLINE_INTERVALS),
        ]
    ),
    symbols=SymbolRule(
        binance_symbol_problem,
        "1 to 40 Unicode letters or digits; one stream whatever the case",
        same_as=str.upper,
    ),
    ws_url="wss://data-stream.binance.vision",
    rest_url="https://data-api.binance.vision",
    stream=BinanceAdapter(),
    listing=BinanceListing(),
    history=BinanceHistory(),
    testing="mdagent.testing.binance",
)
