"""The providers' listing halves (sans-IO) and the generic symbol check, on recorded shapes."""

from __future__ import annotations

from decimal import Decimal

import pytest

from mdagent.pipeline.instruments import symbol_problems
from mdagent.providers.registry import provider_for

BINANCE = provider_for("binance")
POLYGON = provider_for("polygon")

EXCHANGE_INFO = b"""{"timezone":"UTC","serverTime":1,"rateLimits":[],"exchangeFilters":[],"symbols":[
 {"symbol":"ETHBTC","status":"TRADING","baseAsset":"ETH","quoteAsset":"BTC","filters":[
  {"filterType":"PRICE_FILTER","minPrice":"0.00001000","maxPrice":"922327.00000000","tickSize":"0.00001000"},
  {"filterType":"LOT_SIZE","minQty":"0.00010000","maxQty":"100000.00000000","stepSize":"0.00010000"}]},
 {"symbol":"LUNABTC","status":"BREAK","baseAsset":"LUNA","quoteAsset":"BTC","filters":[]},
 {"symbol":"BADBTC","status":"TRADING","filters":[{"filterType":"PRICE_FILTER","tickSize":"abc"}]},
 {"status":"TRADING"}
]}"""


def test_binance_exchange_info_exact_steps_status_and_unreadable_entries() -> None:
    assert BINANCE.listing is not None
    listing = BINANCE.listing.parse_listing(EXCHANGE_INFO)
    eth, luna = listing.instruments
    assert (eth.symbol, eth.status, eth.active, eth.base_asset, eth.quote_asset) == (
        "ETHBTC", "TRADING", True, "ETH", "BTC"
    )  # fmt: skip
    assert str(eth.tick_size) == "0.00001000" and eth.lot_size == Decimal("0.0001")
    assert eth.raw.startswith(b'{"symbol":"ETHBTC"')
    assert (luna.active, luna.tick_size, luna.lot_size) == (False, None, None)
    assert listing.unreadable == 2 and listing.next_cursor is None
    with pytest.raises(ValueError, match="exchangeInfo"):
        BINANCE.listing.parse_listing(EXCHANGE_INFO[:100])
    assert BINANCE.listing.listed_as("btcusdt") == "BTCUSDT"


def test_polygon_reference_tickers_page() -> None:
    assert POLYGON.listing is not None
    body = (
        b'{"results":[{"ticker":"BRK.A","name":"Berkshire Hathaway Inc.","market":"stocks",'
        b'"locale":"us","type":"CS","active":true,"currency_name":"usd"},'
        b'{"ticker":"OLD","active":false,"delisted_utc":"2020-01-01T00:00:00Z"},{"name":"x"}],'
        b'"status":"OK","count":3,"next_url":"https://api.massive.com/v3/reference/tickers?cursor=x"}'
    )
    listing = POLYGON.listing.parse_listing(body)
    brk, old = listing.instruments
    assert (brk.symbol, brk.status, brk.active, brk.quote_asset, brk.name, brk.type) == (
        "BRK.A", "active", True, "USD", "Berkshire Hathaway Inc.", "CS"
    )  # fmt: skip
    assert (old.status, old.active) == ("inactive", False)
    assert listing.unreadable == 1
    assert listing.next_cursor == "https://api.massive.com/v3/reference/tickers?cursor=x"
    with pytest.raises(ValueError):
        POLYGON.listing.parse_listing(b'{"status":"ERROR","error":"x"}')
    with pytest.raises(ValueError):
        POLYGON.listing.parse_listing(body[:50])
    assert POLYGON.listing.listed_as("*") is None
    assert POLYGON.listing.listed_as("BCpC") == "BCpC"  # case-sensitive


def test_symbol_problems_unknown_with_nearest_halted_and_wildcard() -> None:
    listed = {
        "BTCUSDT": ("TRADING", True),
        "ETHUSDT": ("HALT", False),
        "BNBUSDT": ("TRADING", True),
    }
    problems = symbol_problems(
        BINANCE, ["btcusdt", "ETHUSDT", "BTCUSTD", "ZZZZ9", "BTCUSDT"], listed
    )
    assert [p.text for p in problems] == [
        "binance: symbol 'ETHUSDT' is not trading (Binance status HALT)",
        "binance: symbol 'BTCUSTD' is not listed by Binance (nearest listed: BTCUSDT)",
        "binance: symbol 'ZZZZ9' is not listed by Binance",
    ]
    assert symbol_problems(POLYGON, ["*"], {}) == []
