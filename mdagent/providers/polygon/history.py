"""The Polygon/Massive history half: REST page bodies -> ``Page``, errors -> ``ApiError``.

Sans-IO, wrapping the page parsers of ``sansio.py`` (wire-formats.md 2.5,
2.6). The cursor is the page's ``next_url`` as sent (it carries the
provider's ``cursor`` parameter and no key); absent on the last page.

- ``T``: ``GET /v3/trades/{ticker}``; ``Q``: ``GET /v3/quotes/{ticker}``;
- ``AM`` / ``A``: ``GET /v2/aggs/ticker/{ticker}/range/1/minute|second/...``.
"""

from __future__ import annotations

from mdagent.providers.base import ApiError, Page, PageRequest
from mdagent.providers.polygon.sansio import (
    _ERROR_DECODER,
    parse_aggs_page,
    parse_error_body,
    parse_quotes_page,
    parse_trades_page,
)

_AGG_SPANS = {"AM": (1, "minute"), "A": (1, "second")}


class PolygonHistory:
    """The history half of Polygon/Massive (see providers/base.py HistoryHalf)."""

    def parse_page(self, request: PageRequest, body: bytes, received_ns: int) -> Page:
        channel, ticker = request.channel, request.symbol
        if channel == "T":
            records, next_url = parse_trades_page(ticker, body, received_ns)
        elif channel == "Q":
            records, next_url = parse_quotes_page(ticker, body, received_ns)
        elif channel in _AGG_SPANS:
            multiplier, timespan = _AGG_SPANS[channel]
            records, next_url = parse_aggs_page(ticker, multiplier, timespan, body, received_ns)
        else:
            raise ValueError(f"Polygon channel {channel!r} has no REST history")
        return Page(records, next_url or None)

    def parse_error(self, http_status: int, body: bytes) -> ApiError | None:
        # ``{"status":"ERROR","error":"..."}`` or, for entitlements,
        # ``{"status":"NOT_AUTHORIZED","message":"..."}`` (2.6). The sansio
        # parser gives the text with the status word in front; split it off.
        text = parse_error_body(body)
        if text is None:
            return None
        status = _ERROR_DECODER.decode(body).status or None
        message = text.removeprefix(f"{status}: ") if status else text
        return ApiError(http_status, status, message)
