"""The history half has one shape for every provider: ``Page`` and ``ApiError``.

Bodies are the examples of wire-formats.md 1.7, 1.8 (Binance) and 2.5, 2.6
(Polygon/Massive), asked for through the registry as generic code will.
"""

from __future__ import annotations

import pytest

from mdagent.providers.base import ApiError, Page, PageRequest
from mdagent.providers.registry import provider_for
from mdagent.records import Candle, Trade

RECV = 1_700_000_000_000_000_000

BINANCE_AGG_TRADES = (
    b'[{"a":26129,"p":"0.01633102","q":"4.70443515","f":27781,"l":27781,'
    b'"T":1498793709153,"m":true,"M":true}]'
)
BINANCE_KLINES = (
    b'[[1499040000000,"0.01634790","0.80000000","0.01575800","0.01577100","148976.11427815",'
    b'1499644799999,"2434.19055334",308,"1756.87402397","28.46694368","0"]]'
)
POLYGON_TRADES = (
    b'{"next_url":"https://api.massive.com/v3/trades/AAPL?cursor=YWN0","request_id":"a47d",'
    b'"results":[{"conditions":[12,41],"exchange":11,"id":"1",'
    b'"participant_timestamp":1517562000015577000,"price":171.55,"sequence_number":1063,'
    b'"sip_timestamp":1517562000016036600,"size":100,"tape":3}],"status":"OK"}'
)


def test_binance_page_cursor_is_the_next_id_when_the_page_is_full() -> None:
    history = provider_for("binance").history
    full = history.parse_page(PageRequest("BNBBTC", "aggTrade", limit=1), BINANCE_AGG_TRADES, RECV)
    assert isinstance(full, Page)
    [trade] = full.records
    assert isinstance(trade, Trade) and trade.seq == 26129
    assert full.next_cursor == "fromId=26130"
    last = history.parse_page(PageRequest("BNBBTC", "aggTrade", limit=2), BINANCE_AGG_TRADES, RECV)
    assert last.records == full.records and last.next_cursor is None


def test_binance_kline_page_cursor_is_the_next_open_time() -> None:
    history = provider_for("binance").history
    page = history.parse_page(PageRequest("BNBBTC", "kline_1d", limit=1), BINANCE_KLINES, RECV)
    [bar] = page.records
    assert isinstance(bar, Candle) and bar.channel == "kline_1d"
    assert page.next_cursor == "startTime=1499040000001"


def test_polygon_page_cursor_is_next_url() -> None:
    history = provider_for("polygon").history
    page = history.parse_page(PageRequest("AAPL", "T", limit=50_000), POLYGON_TRADES, RECV)
    [trade] = page.records
    assert isinstance(trade, Trade) and trade.seq == 1063
    assert page.next_cursor == "https://api.massive.com/v3/trades/AAPL?cursor=YWN0"


@pytest.mark.parametrize(("provider", "channel"), [("binance", "bookTicker"), ("polygon", "X")])
def test_a_channel_without_history_is_a_caller_error(provider: str, channel: str) -> None:
    with pytest.raises(ValueError, match="no REST history"):
        provider_for(provider).history.parse_page(PageRequest("X", channel, 1), b"[]", RECV)


@pytest.mark.parametrize(
    ("provider", "status", "body", "expected"),
    [
        ("binance", 400, b'{"code":-1121,"msg":"Invalid symbol."}', ("-1121", "Invalid symbol.")),
        (
            "polygon",
            401,
            b'{"status":"ERROR","error":"Unknown API Key"}',
            ("ERROR", "Unknown API Key"),
        ),
        (
            "polygon",
            403,
            b'{"status":"NOT_AUTHORIZED","request_id":"r","message":"You are not entitled"}',
            ("NOT_AUTHORIZED", "You are not entitled"),
        ),
        ("binance", 502, b"<html>bad gateway</html>", None),
        ("polygon", 502, b"<html>bad gateway</html>", None),
    ],
)
def test_error_bodies_have_one_shape(
    provider: str, status: int, body: bytes, expected: tuple[str, str] | None
) -> None:
    error = provider_for(provider).history.parse_error(status, body)
    if expected is None:
        assert error is None
    else:
        assert error == ApiError(status, *expected)
