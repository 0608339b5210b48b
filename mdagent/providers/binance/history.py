"""The Binance history half: REST page bodies -> ``Page``, error bodies -> ``ApiError``.

Sans-IO, wrapping the page parsers of ``sansio.py`` (wire-formats.md 1.7,
1.8). Binance pages carry no cursor; the next one is asked for by id or
time, so the cursor is the query fragment to send next:

- ``trade`` (``/api/v3/historicalTrades``) and ``aggTrade``
  (``/api/v3/aggTrades``): ``fromId=<last id + 1>``;
- ``kline_<interval>`` (``/api/v3/klines``): ``startTime=<last open time + 1 ms>``.

A page shorter than the limit asked for is the last one (cursor None).
"""

from __future__ import annotations

from mdagent.providers.base import ApiError, Page, PageRequest
from mdagent.providers.binance.sansio import (
    parse_agg_trades_page,
    parse_error_body,
    parse_historical_trades_page,
    parse_klines_page,
)
from mdagent.records import Candle, Record, Trade

_NS_PER_MS = 1_000_000


class BinanceHistory:
    """The history half of Binance (see providers/base.py HistoryHalf)."""

    def parse_page(self, request: PageRequest, body: bytes, received_ns: int) -> Page:
        channel = request.channel
        if channel == "trade":
            records = parse_historical_trades_page(request.symbol, body, received_ns)
        elif channel == "aggTrade":
            records = parse_agg_trades_page(request.symbol, body, received_ns)
        elif channel.startswith("kline_"):
            records = parse_klines_page(request.symbol, channel[6:], body, received_ns)
        else:
            raise ValueError(f"Binance channel {channel!r} has no REST history")
        full = len(records) >= request.limit
        return Page(records, _next_cursor(records) if full else None)

    def parse_error(self, http_status: int, body: bytes) -> ApiError | None:
        error = parse_error_body(body)
        if error is None:
            return None
        code, message = error
        return ApiError(http_status, str(code), message)


def _next_cursor(records: list[Record]) -> str | None:
    """Where the page after ``records`` starts (rows come oldest first, 1.7)."""
    for record in reversed(records):  # dead letters carry no position
        if type(record) is Trade and record.seq is not None:
            return f"fromId={record.seq + 1}"
        if type(record) is Candle:
            return f"startTime={record.open_ts_ns // _NS_PER_MS + 1}"
    return None
