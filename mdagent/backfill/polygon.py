"""Polygon.io / Massive REST history for the job workers (wire-formats.md 2.5, 2.6).

The one module of the backfill that knows Polygon endpoints and calls the
Polygon history half (``providers/polygon/history.py``: REST page -> ``Page``,
error body -> ``ApiError``).

- ``T``: ``GET /v3/trades/{ticker}``, ``Q``: ``GET /v3/quotes/{ticker}``:
  ``timestamp.gte`` / ``timestamp.lte`` in ns, ``order=asc`` (the default is
  desc), ``limit=50000``; then ``next_url`` until it is absent. Timestamps
  stay ns (the records keep ``sip_timestamp``).
- ``AM`` / ``A``: ``GET /v2/aggs/ticker/{ticker}/range/1/minute|second/{from}/{to}``
  in ms, ``sort=asc``, ``adjusted=false`` (the stream's bars are not
  split-adjusted), then ``next_url``.

A window is complete when its range has been read to the end (no
``next_url``). The key goes in ``Authorization: Bearer``; ``next_url`` is
followed as it is, and an ``apiKey`` parameter a server put in it is removed
before it is used or stored as the checkpoint (``url:<next_url>``).

A 403 (``NOT_AUTHORIZED``: the plan does not cover data that old) makes the
job ``unrecoverable`` rather than failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import msgspec

from mdagent.backfill.history import Page
from mdagent.backfill.plan import Estimate, Plan
from mdagent.backfill.ratelimit import RequestBudget
from mdagent.backfill.rest import RestClient, RestEvents, VenueRules, readable_as
from mdagent.db.jobs import Job
from mdagent.errors import RestUnavailable, VenueRejected
from mdagent.providers.base import Instrument, PageRequest
from mdagent.providers.registry import provider_for

PROVIDER: Final = "polygon"
V3_LIMIT: Final = 50_000
NS_PER_MS: Final = 1_000_000
_AGG_SPANS: Final = {"AM": "minute", "A": "second"}
TICKERS_PATH: Final = "/v3/reference/tickers"
TICKERS_LIMIT: Final = 1000  # the endpoint's maximum page
MARKET: Final = "stocks"  # the provider's cluster (providers/polygon/provider.py)
# A next_url chain longer than this is a venue fault, not a listing (US stocks
# take about 12 pages of 1000 active tickers).
MAX_TICKER_PAGES: Final = 500


class _PageShape(msgspec.Struct):
    """What every v2/v3 page is: an object with ``results`` (absent when empty)."""

    results: list[msgspec.Raw] = []
    next_url: str | None = None


# Anything else (a truncated body) is a failed request, never the last page.
readable_page: Final = readable_as(msgspec.json.Decoder(_PageShape), "a results page")


def without_api_key(url: str) -> str:
    """``url`` with any ``apiKey`` query parameter removed: keys travel in headers only."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "apiKey"]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _api_error(status: int, body: bytes) -> tuple[str | None, str] | None:
    """The venue's (status word, message) of a failed call, from the history half."""
    error = provider_for(PROVIDER).history.parse_error(status, body)
    return None if error is None else (error.code, error.message)


def _no_weight_header(headers: httpx.Headers) -> int | None:
    return None  # Polygon reports no budget use; 429s pause the client


class PolygonHistory:
    """Polygon REST history over one shared :class:`RestClient` (one per process).

    ``api_key``: sent as ``Authorization: Bearer``; ``budget``: no weight
    limit by default (paid plans), only the 429 pauses.
    """

    provider = PROVIDER

    def __init__(
        self,
        rest_url: str,
        api_key: str | None,
        budget: RequestBudget | None = None,
        *,
        events: RestEvents | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        **client_options: Any,
    ) -> None:
        self.budget = budget or RequestBudget(None)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        rules = VenueRules(PROVIDER, _no_weight_header, _api_error)
        self.client = RestClient(
            rest_url,
            rules,
            self.budget,
            headers=headers,
            events=events,
            transport=transport,
            **client_options,
        )

    async def start(self) -> None:
        """Nothing to learn up front: Polygon advertises no limits."""

    async def aclose(self) -> None:
        await self.client.aclose()

    async def instruments(self, symbols: Sequence[str]) -> list[Instrument]:
        """Every active stocks ticker (``/v3/reference/tickers``, pages of 1000 by
        ``next_url``), then each of ``symbols`` not among them asked for with
        ``active=false``: listed there means delisted, absent means unknown."""
        listing = provider_for(PROVIDER).listing
        assert listing is not None
        found: list[Instrument] = []
        path: str = TICKERS_PATH
        params: dict[str, str | int] = {"market": MARKET, "limit": TICKERS_LIMIT}
        for _page in range(MAX_TICKER_PAGES):
            response = await self.client.get(path, params, validate=readable_page)
            page = listing.parse_listing(response.body)
            found.extend(page.instruments)
            if page.next_cursor is None:
                break
            path, params = without_api_key(page.next_cursor), {}
        else:
            raise RestUnavailable(f"{TICKERS_PATH}: more than {MAX_TICKER_PAGES} pages")
        listed = {i.symbol for i in found}
        for symbol in symbols:
            if symbol in listed:
                continue
            params = {"market": MARKET, "ticker": symbol, "active": "false"}
            response = await self.client.get(TICKERS_PATH, params, validate=readable_page)
            found.extend(listing.parse_listing(response.body).instruments)
        return found

    async def lookup(self, symbol: str) -> list[Instrument]:
        """``/v3/reference/tickers`` for one ticker, active and then inactive
        (the endpoint lists only active tickers unless asked)."""
        listing = provider_for(PROVIDER).listing
        assert listing is not None
        found: list[Instrument] = []
        for active in ("true", "false"):
            params: dict[str, str | int] = {"market": MARKET, "ticker": symbol, "active": active}
            response = await self.client.get(TICKERS_PATH, params, validate=readable_page)
            found.extend(listing.parse_listing(response.body).instruments)
            if found:
                break
        return found

    async def estimate(self, plan: Plan) -> Estimate:
        """Polygon has no weights; the row count is not known before reading."""
        return Estimate(
            None,
            None,
            None,
            f"at least {len(plan.jobs)} requests; pages hold up to {V3_LIMIT} rows",
        )

    def has_history(self, channel: str) -> bool:
        return channel in ("T", "Q") or channel in _AGG_SPANS

    def is_unrecoverable(self, error: VenueRejected) -> bool:
        return error.status == 403

    async def next_page(self, job: Job) -> Page:
        assert job.from_ts_ns is not None and job.to_ts_ns is not None
        params: dict[str, str | int]
        if job.cursor is not None:
            prefix, _, url = job.cursor.partition(":")
            if prefix != "url" or not url:
                raise ValueError(f"bad checkpoint {job.cursor!r} (expected url:<next_url>)")
            path, params = without_api_key(url), {}
        elif job.channel in ("T", "Q"):
            kind = "trades" if job.channel == "T" else "quotes"
            path = f"/v3/{kind}/{job.symbol}"
            # Whole milliseconds: a window's bounds come from stream times (ms),
            # and REST times are ns, so a trade in the last ms of the window
            # has a REST time up to 999,999 ns after the bound.
            params = {
                "timestamp.gte": job.from_ts_ns // NS_PER_MS * NS_PER_MS,
                "timestamp.lte": job.to_ts_ns // NS_PER_MS * NS_PER_MS + NS_PER_MS - 1,
                "order": "asc",
                "sort": "timestamp",
                "limit": V3_LIMIT,
            }
        else:
            span = _AGG_SPANS[job.channel]
            from_ms = job.from_ts_ns // NS_PER_MS
            to_ms = job.to_ts_ns // NS_PER_MS
            path = f"/v2/aggs/ticker/{job.symbol}/range/1/{span}/{from_ms}/{to_ms}"
            params = {"sort": "asc", "adjusted": "false", "limit": V3_LIMIT}
        response = await self.client.get(path, params, validate=readable_page)
        request = PageRequest(job.symbol, job.channel, V3_LIMIT)
        page = provider_for(PROVIDER).history.parse_page(
            request, response.body, response.received_ns
        )
        records, next_url = page.records, page.next_cursor
        cursor = f"url:{without_api_key(next_url)}" if next_url else None
        return Page(records, cursor)
