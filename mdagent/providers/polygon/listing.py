"""The Polygon/Massive listing half: ``GET /v3/reference/tickers`` -> ``Listing`` (sans-IO).

Facts (the endpoint as the official clients' OpenAPI describes it, [M-JS]
in wire-formats.md; not yet a section there): ``{"results": [...],
"next_url": ..., "status": "OK", "count": n}``; each result has ``ticker``,
``name``, ``market`` (``stocks``...), ``type`` (``CS``, ``ETF``...),
``active`` and ``currency_name``, optional ``locale``, ``primary_exchange``,
``delisted_utc``. ``active`` defaults to true in the query, so delisted
tickers appear only when asked for with ``active=false``. Pages follow
``next_url`` (as the v3 market-data endpoints, 2.5). No tick or lot size is
given. Tickers are case-sensitive and ``*`` subscribes to all (2.7), so
``*`` names no single instrument.
"""

from __future__ import annotations

from typing import Final

import msgspec

from mdagent.providers.base import Instrument, Listing, listing_of

WILDCARD: Final = "*"


class _Ticker(msgspec.Struct, gc=False):
    ticker: str
    active: bool = True
    name: str | None = None
    market: str | None = None
    type: str | None = None
    currency_name: str | None = None


class _Page(msgspec.Struct, gc=False):
    status: str
    results: list[msgspec.Raw] = []
    next_url: str | None = None


_PAGE: Final = msgspec.json.Decoder(_Page)
_TICKER: Final = msgspec.json.Decoder(_Ticker)


def _instrument(raw: msgspec.Raw) -> Instrument:
    entry = _TICKER.decode(raw)
    return Instrument(
        symbol=entry.ticker,
        status="active" if entry.active else "inactive",
        active=entry.active,
        raw=bytes(raw),
        quote_asset=entry.currency_name.upper() if entry.currency_name else None,
        name=entry.name,
        market=entry.market,
        type=entry.type,
    )


class PolygonListing:
    """The listing half of Polygon (see providers/base.py ListingHalf)."""

    def parse_listing(self, body: bytes) -> Listing:
        try:
            page = _PAGE.decode(body)
        except msgspec.DecodeError as exc:
            raise ValueError(f"reference tickers page is not readable: {exc}") from None
        if page.status != "OK":
            raise ValueError(f"reference tickers page has status {page.status!r}")
        return listing_of(page.results, _instrument, (msgspec.DecodeError,), page.next_url or None)

    def listed_as(self, symbol: str) -> str | None:
        return None if symbol == WILDCARD else symbol
