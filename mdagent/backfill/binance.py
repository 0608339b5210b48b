"""Binance Spot REST history for the job workers (wire-formats.md 1.7, 1.8).

The one module of the backfill that knows Binance endpoints and calls the
Binance history half (``providers/binance/history.py``: REST page -> ``Page``,
error body -> ``ApiError``), through :func:`_records` and :func:`_api_error` only.

- ``trade``: ``GET /api/v3/historicalTrades?fromId=`` (weight 25), paged by id.
- ``aggTrade``: ``GET /api/v3/aggTrades?fromId=`` (weight 4), paged by id.
  A time-range job first finds its first id with ``aggTrades?startTime=``
  (weight 4; an aggTrade's ``f`` is the first trade id it covers).
- ``kline_<interval>``: ``GET /api/v3/klines?startTime=&endTime=`` (weight 2),
  paged by open time.
- ``bookTicker``: Binance keeps no history: its gaps are unrecoverable.

Ids are the proof of completeness: a page read from id N that starts at
N + k shows ids N..N+k-1 never existed (Binance has been seen to skip trade
ids); they are recorded ``absent`` and never asked for again.

Checkpoints (``fetch_jobs.cursor``): ``id:<next id>`` or ``ms:<next open time>``.

Hosts: the default ``rest_url`` is the market-data-only host, which does not
serve ``historicalTrades`` (wire-formats.md 1.7, [B-MDO]); with that default
the trades endpoint alone is asked of the main host (:data:`FULL_API_URL`),
under the same weight budget (weights are counted per IP, 1.8). A configured
``rest_url`` (a testnet, a fake, a proxy) serves every endpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import attrs
import httpx
import msgspec

from mdagent.backfill.history import Page
from mdagent.backfill.plan import Estimate, Plan, estimate_by_count, estimate_klines
from mdagent.backfill.ratelimit import RequestBudget
from mdagent.backfill.rest import RestClient, RestEvents, RestResponse, VenueRules, readable_as
from mdagent.db.jobs import FoundRange, Job
from mdagent.errors import RestUnavailable, VenueRejected
from mdagent.providers.base import Instrument, PageRequest
from mdagent.providers.registry import provider_for
from mdagent.records import Candle, DeadLetter, Record, Trade

PROVIDER: Final = "binance"
PAGE_LIMIT: Final = 1000  # rows per page, the endpoints' maximum
NS_PER_MS: Final = 1_000_000
# Request weights (wire-formats.md 1.7).
WEIGHT_TRADES: Final = 25
WEIGHT_AGG_TRADES: Final = 4
WEIGHT_KLINES: Final = 2
WEIGHT_EXCHANGE_INFO: Final = 20
INVALID_SYMBOL: Final = "-1121"  # the error code of a symbol Binance does not know
DEFAULT_WEIGHT_LIMIT: Final = 6000  # per minute, until exchangeInfo says otherwise
# The market-data-only host and the main one (wire-formats.md 1.7).
MARKET_DATA_ONLY_URL: Final = "https://data-api.binance.vision"
FULL_API_URL: Final = "https://api.binance.com"

_INTERVAL_S: Final = {"SECOND": 1, "MINUTE": 60, "HOUR": 3600, "DAY": 86400}
_LETTER: Final = {1: "s", 60: "m", 3600: "h", 86400: "d"}


class _RateLimit(msgspec.Struct):
    rateLimitType: str
    interval: str
    intervalNum: int
    limit: int


class _ExchangeInfo(msgspec.Struct):
    rateLimits: list[_RateLimit] = []


# A page is a JSON array of rows (maybe empty); anything else is a failed request.
readable_rows: Final = readable_as(msgspec.json.Decoder(list[msgspec.Raw]), "a JSON array of rows")
_readable_info: Final = readable_as(msgspec.json.Decoder(_ExchangeInfo), "an exchangeInfo object")


def used_weight_header(window_s: float) -> str:
    """``X-MBX-USED-WEIGHT-<n><unit>`` for a window of ``window_s`` seconds, lower-case."""
    for unit_s in (86400, 3600, 60, 1):
        if window_s >= unit_s and window_s % unit_s == 0:
            return f"x-mbx-used-weight-{int(window_s // unit_s)}{_LETTER[unit_s]}"
    return "x-mbx-used-weight-1m"


def _used_weight(headers: httpx.Headers, window_s: float) -> int | None:
    value = headers.get(used_weight_header(window_s))
    return int(value) if value is not None and value.isdigit() else None


def _api_error(status: int, body: bytes) -> tuple[str | None, str] | None:
    """The venue's (code, message) of a failed call, from the provider's history half."""
    error = provider_for(PROVIDER).history.parse_error(status, body)
    return None if error is None else (error.code, error.message)


def _records(symbol: str, channel: str, limit: int, response: RestResponse) -> list[Record]:
    """A page's records (and dead letters), from the provider's history half."""
    request = PageRequest(symbol, channel, limit)
    return (
        provider_for(PROVIDER)
        .history.parse_page(request, response.body, response.received_ns)
        .records
    )


@attrs.frozen
class _IdEndpoint:
    channel: str
    path: str
    weight: int
    # Not served by the market-data-only host (1.7).
    full_api_only: bool = False


_ID_ENDPOINTS: Final = {
    "trade": _IdEndpoint("trade", "/api/v3/historicalTrades", WEIGHT_TRADES, full_api_only=True),
    "aggTrade": _IdEndpoint("aggTrade", "/api/v3/aggTrades", WEIGHT_AGG_TRADES),
}


class BinanceHistory:
    """Binance REST history over one shared :class:`RestClient` (one per process).

    ``budget`` is the process's Binance weight budget; :meth:`start` adopts
    the limit exchangeInfo advertises.
    """

    provider = PROVIDER

    def __init__(
        self,
        rest_url: str,
        budget: RequestBudget | None = None,
        *,
        events: RestEvents | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        **client_options: Any,
    ) -> None:
        self.budget = budget or RequestBudget(DEFAULT_WEIGHT_LIMIT, 60.0)
        budget_ref = self.budget

        def used_weight(headers: httpx.Headers) -> int | None:
            return _used_weight(headers, budget_ref.window_s)

        rules = VenueRules(PROVIDER, used_weight, _api_error, bans=frozenset({418}))
        market_data_only = rest_url.rstrip("/") == MARKET_DATA_ONLY_URL
        # Where the endpoints the market-data-only host lacks are asked ("": rest_url).
        self.full_api_url = FULL_API_URL if market_data_only else ""
        self.client = RestClient(
            rest_url, rules, self.budget, events=events, transport=transport, **client_options
        )

    async def start(self) -> None:
        """Read exchangeInfo's REQUEST_WEIGHT limit (the shortest window) into the budget."""
        response = await self.client.get(
            "/api/v3/exchangeInfo", weight=WEIGHT_EXCHANGE_INFO, validate=_readable_info
        )
        info = msgspec.json.decode(response.body, type=_ExchangeInfo)
        limits = [
            (_INTERVAL_S[r.interval] * r.intervalNum, r.limit)
            for r in info.rateLimits
            if r.rateLimitType == "REQUEST_WEIGHT" and r.interval in _INTERVAL_S
        ]
        if limits:
            window_s, limit = min(limits)
            self.budget.configure(limit, float(window_s))
            # The window's use so far (a previous run's too), under its own name.
            used = _used_weight(response.headers, self.budget.window_s)
            if used is not None:
                self.budget.observe_used(used, response.sent_at)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def instruments(self, symbols: Sequence[str]) -> list[Instrument]:
        """Every symbol of exchangeInfo (one request, weight 20; halted and
        delisted symbols are listed with their status, so ``symbols`` is not needed)."""
        listing = provider_for(PROVIDER).listing
        assert listing is not None
        response = await self.client.get(
            "/api/v3/exchangeInfo", weight=WEIGHT_EXCHANGE_INFO, validate=_readable_info
        )
        return listing.parse_listing(response.body).instruments

    async def lookup(self, symbol: str) -> list[Instrument]:
        """exchangeInfo for one symbol (weight 20); a symbol Binance does not
        know is refused with -1121 (wire-formats.md 1.8), read as empty."""
        listing = provider_for(PROVIDER).listing
        assert listing is not None
        try:
            response = await self.client.get(
                "/api/v3/exchangeInfo",
                {"symbol": symbol},
                weight=WEIGHT_EXCHANGE_INFO,
                validate=_readable_info,
            )
        except VenueRejected as exc:
            if exc.code == INVALID_SYMBOL:
                return []
            raise
        return listing.parse_listing(response.body).instruments

    async def estimate(self, plan: Plan) -> Estimate:
        """Klines: exact. Trades and aggTrades: the ids at both ends of the range
        (two aggTrades requests, weight 8) give the row count."""
        budget = self.budget
        limit = budget.limit or DEFAULT_WEIGHT_LIMIT
        if plan.channel.startswith("kline_"):
            if plan.bar_s is None:
                return Estimate(
                    len(plan.jobs), len(plan.jobs) * WEIGHT_KLINES, None, "monthly bars"
                )
            return estimate_klines(plan, WEIGHT_KLINES, limit, budget.window_s)
        first = await self._agg_at(plan.symbol, {"startTime": plan.from_ns // NS_PER_MS})
        last = await self._agg_at(plan.symbol, {"endTime": plan.to_ns // NS_PER_MS})
        if first is None or last is None or first.ts_ns > plan.to_ns:
            return Estimate(
                len(plan.jobs), len(plan.jobs) * WEIGHT_AGG_TRADES, 0.0, "no trades in the range"
            )
        endpoint = _ID_ENDPOINTS[plan.channel]
        if plan.channel == "trade":
            assert last.last_trade_id is not None and first.first_trade_id is not None
            rows = last.last_trade_id - first.first_trade_id + 1
        else:
            assert last.seq is not None and first.seq is not None
            rows = last.seq - first.seq + 1
        return estimate_by_count(
            plan, rows, PAGE_LIMIT, endpoint.weight, WEIGHT_AGG_TRADES, limit, budget.window_s
        )

    async def _agg_at(self, symbol: str, bound: dict[str, str | int]) -> Trade | None:
        response = await self.client.get(
            "/api/v3/aggTrades",
            {"symbol": symbol, **bound, "limit": 1},
            weight=WEIGHT_AGG_TRADES,
            validate=readable_rows,
        )
        records = _records(symbol, "aggTrade", 1, response)
        return next((r for r in records if isinstance(r, Trade)), None)

    def has_history(self, channel: str) -> bool:
        return channel in _ID_ENDPOINTS or channel.startswith("kline_")

    def is_unrecoverable(self, error: VenueRejected) -> bool:
        return False

    async def next_page(self, job: Job) -> Page:
        endpoint = _ID_ENDPOINTS.get(job.channel)
        if endpoint is not None:
            return await self._id_page(job, endpoint)
        if job.channel.startswith("kline_"):
            return await self._kline_page(job, job.channel[len("kline_") :])
        raise ValueError(f"binance keeps no REST history for channel {job.channel!r}")

    # -- trades and aggTrades, by id -----------------------------------------

    async def _id_page(self, job: Job, endpoint: _IdEndpoint) -> Page:
        requests = 0
        if job.cursor is not None:
            start = _cursor_value(job.cursor, "id")
        elif job.from_seq is not None:
            start = job.from_seq
        else:
            first = await self._first_id_at(job, endpoint.channel)
            requests += 1
            if first is None:
                return Page([], None, requests=requests)  # nothing traded in the range
            start = first
        last = job.to_seq
        limit = PAGE_LIMIT if last is None else max(1, min(PAGE_LIMIT, last - start + 1))
        path = endpoint.path
        if endpoint.full_api_only:
            path = self.full_api_url + path
        response = await self.client.get(
            path,
            {"symbol": job.symbol, "fromId": start, "limit": limit},
            weight=endpoint.weight,
            validate=readable_rows,
        )
        requests += 1
        records = _records(job.symbol, endpoint.channel, limit, response)
        trades = sorted((r for r in records if isinstance(r, Trade)), key=_seq)
        dead = [r for r in records if isinstance(r, DeadLetter)]
        if not trades and not dead:
            if last is None:
                return Page([], None, requests=requests)  # read to the newest trade
            raise RestUnavailable(
                f"{endpoint.path}: no {endpoint.channel} from id {start} yet"
                f" (the gap ends at {last})"
            )
        return _id_page_result(job, start, limit, trades, dead, requests)

    async def _first_id_at(self, job: Job, channel: str) -> int | None:
        """The first trade (or aggregate) id at or after ``job.from_ts_ns``, within the range."""
        assert job.from_ts_ns is not None and job.to_ts_ns is not None
        response = await self.client.get(
            "/api/v3/aggTrades",
            {
                "symbol": job.symbol,
                "startTime": job.from_ts_ns // NS_PER_MS,
                "endTime": job.to_ts_ns // NS_PER_MS,
                "limit": 1,
            },
            weight=WEIGHT_AGG_TRADES,
            validate=readable_rows,
        )
        for record in _records(job.symbol, "aggTrade", 1, response):
            if isinstance(record, Trade):
                return record.first_trade_id if channel == "trade" else record.seq
        return None

    # -- klines, by open time ------------------------------------------------

    async def _kline_page(self, job: Job, interval: str) -> Page:
        assert job.from_ts_ns is not None and job.to_ts_ns is not None
        if job.cursor is not None:
            start_ms = _cursor_value(job.cursor, "ms")
        else:
            # The first bar opening at or after the range start.
            start_ms = -(-job.from_ts_ns // NS_PER_MS)
        end_ms = job.to_ts_ns // NS_PER_MS
        if start_ms > end_ms:
            return Page([], None, requests=0)
        response = await self.client.get(
            "/api/v3/klines",
            {
                "symbol": job.symbol,
                "interval": interval,
                "startTime": start_ms,
                "endTime": end_ms,
                "limit": PAGE_LIMIT,
            },
            weight=WEIGHT_KLINES,
            validate=readable_rows,
        )
        records = _records(job.symbol, f"kline_{interval}", PAGE_LIMIT, response)
        bars = [r for r in records if isinstance(r, Candle) and r.open_ts_ns <= job.to_ts_ns]
        kept: list[Record] = [*bars, *(r for r in records if isinstance(r, DeadLetter))]
        full = len(records) >= PAGE_LIMIT
        if not full or not bars:
            return Page(kept, None)
        next_ms = max(b.open_ts_ns for b in bars) // NS_PER_MS + 1
        return Page(kept, None if next_ms > end_ms else f"ms:{next_ms}")


def _seq(trade: Trade) -> int:
    assert trade.seq is not None
    return trade.seq


def _cursor_value(cursor: str, kind: str) -> int:
    prefix, _, value = cursor.partition(":")
    if prefix != kind or not value.isdigit():
        raise ValueError(f"bad checkpoint {cursor!r} (expected {kind}:<int>)")
    return int(value)


def _id_page_result(
    job: Job,
    start: int,
    limit: int,
    trades: list[Trade],
    dead: list[DeadLetter],
    requests: int,
) -> Page:
    """Keep the page's trades within the job; every id skipped on the way is ``absent``.

    With unreadable rows on the page (dead letters) a skipped id may be one of
    them, so the skipped ranges are recorded ``unrecoverable`` instead: never
    "proved absent" on a guess.
    """
    last = job.to_seq
    end_ns = job.to_ts_ns
    kept: list[Record] = []
    skipped: list[tuple[int, int]] = []
    expected = start
    done = False
    for trade in trades:
        seq = _seq(trade)
        if seq < expected:
            continue  # a repeat within the page
        if (last is not None and seq > last) or (end_ns is not None and trade.ts_ns > end_ns):
            done = True
            break
        if seq > expected:
            skipped.append((expected, seq - 1))
        kept.append(trade)
        expected = seq + 1
    if last is not None:
        if done and expected <= last:
            skipped.append((expected, last))
        done = done or expected > last
    elif len(trades) + len(dead) < limit:
        done = True  # a short page: nothing newer exists yet
    status, reason = (
        ("unrecoverable", "ids not readable on REST (see dead_letter)")
        if dead
        else ("absent", "REST page from these ids started after them")
    )
    found = tuple(FoundRange(status, reason, lo, hi) for lo, hi in skipped)
    if not done and expected == start:
        raise RestUnavailable(f"a page from id {start} held no id at or after it")
    kept.extend(dead)
    return Page(kept, None if done else f"id:{expected}", found, requests)
