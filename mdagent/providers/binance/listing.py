"""The Binance listing half: ``GET /api/v3/exchangeInfo`` -> ``Listing`` (sans-IO).

Facts (wire-formats.md 1.7; the symbol entries as the Spot API documents
``exchangeInfo``): ``symbols[]`` entries carry ``symbol``, ``status``
(``TRADING``, ``BREAK``, ``HALT``, ...), ``baseAsset``, ``quoteAsset`` and
``filters[]``; the ``PRICE_FILTER`` filter's ``tickSize`` is the price step
and the ``LOT_SIZE`` filter's ``stepSize`` the quantity step, both decimal
strings (1.9: decimals, never floats). One response lists every symbol; there
are no pages. Symbols are case-insensitive in config and upper case in the
listing (1.4, ``mdagent/symbols.py``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

import msgspec

from mdagent.numbers import NumberError, decimal_text
from mdagent.providers.base import Instrument, Listing, listing_of

TRADING: Final = "TRADING"


class _Filter(msgspec.Struct, gc=False):
    filterType: str
    tickSize: str | None = None
    stepSize: str | None = None


class _Symbol(msgspec.Struct, gc=False):
    symbol: str
    status: str
    baseAsset: str | None = None
    quoteAsset: str | None = None
    filters: list[_Filter] = []


class _ExchangeInfo(msgspec.Struct, gc=False):
    symbols: list[msgspec.Raw]


_INFO: Final = msgspec.json.Decoder(_ExchangeInfo)
_SYMBOL: Final = msgspec.json.Decoder(_Symbol)


def _step(filters: list[_Filter], kind: str, field: str) -> Decimal | None:
    for f in filters:
        if f.filterType == kind:
            text = f.tickSize if kind == "PRICE_FILTER" else f.stepSize
            return None if text is None else Decimal(decimal_text(text, field))
    return None


def _instrument(raw: msgspec.Raw) -> Instrument:
    """Raises ValueError (msgspec's, or NumberError naming the field) for a bad entry."""
    entry = _SYMBOL.decode(raw)
    return Instrument(
        symbol=entry.symbol,
        status=entry.status,
        active=entry.status == TRADING,
        raw=bytes(raw),
        base_asset=entry.baseAsset,
        quote_asset=entry.quoteAsset,
        tick_size=_step(entry.filters, "PRICE_FILTER", "tickSize"),
        lot_size=_step(entry.filters, "LOT_SIZE", "stepSize"),
    )


class BinanceListing:
    """The listing half of Binance (see providers/base.py ListingHalf)."""

    def parse_listing(self, body: bytes) -> Listing:
        try:
            info = _INFO.decode(body)
        except msgspec.DecodeError as exc:
            raise ValueError(f"exchangeInfo is not readable: {exc}") from None
        return listing_of(info.symbols, _instrument, (msgspec.DecodeError, NumberError))

    def listed_as(self, symbol: str) -> str | None:
        return symbol.upper()
