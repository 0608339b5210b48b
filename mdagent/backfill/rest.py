"""The rate-limited REST client of the backfill (httpx under trio).

One ``RestClient`` per venue and process, shared by every worker: it owns the
venue's :class:`~mdagent.backfill.ratelimit.RequestBudget` and one httpx
connection pool. What a response means (wire-formats.md 1.8, 2.6):

- 2xx: the body, once ``validate`` accepts it. A body that does not parse
  (a truncated page) is a failed attempt, retried: never "the last page".
- 429: the venue's ``Retry-After`` pauses every request of this venue, then
  the request is sent again (the pause held to 1 s .. 3 days: :func:`retry_after_s`). 418 (Binance: the IP is banned) likewise, and
  is counted apart: it means the budget was not respected somewhere.
- 5xx, timeouts (also a body trickled for longer than
  ``TOTAL_TIMEOUT_FACTOR`` x ``timeout_s`` in all), broken connections: retried with jittered exponential
  backoff, ``max_attempts`` in all; then :class:`RestUnavailable` (the job is
  tried again later).
- any other 4xx: :class:`VenueRejected` with the venue's code and message
  (the job fails; retrying would not change the answer).

Credentials go in headers only (``headers``): a URL may end up in a log line
or in ``fetch_jobs.cursor`` (Polygon's ``next_url``) and must never hold a key.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
import httpx
import msgspec
import structlog
import trio

from mdagent.backfill.ratelimit import RequestBudget
from mdagent.errors import RestUnavailable, VenueRejected
from mdagent.pipeline.backoff import Backoff

log = structlog.get_logger("mdagent.backfill.rest")

# When a 429/418 carries no (or a bad) Retry-After.
DEFAULT_RETRY_AFTER_S = 60.0
# The longest pause a Retry-After may impose: Binance's longest IP ban (418)
# lasts 3 days (wire-formats.md 1.8). A longer one (``inf``, ``1e308``, a date
# years ahead) is no venue's answer but a broken header or proxy, and paused
# every REST request of the venue (backfill, gap repair, instruments sync)
# for good.
MAX_RETRY_AFTER_S = 3 * 86_400.0
# The shortest: a 429 with ``Retry-After: 0`` (or a date already past) would
# send the request again at once, in a loop as fast as the venue answers 429s.
MIN_RETRY_AFTER_S = 1.0
# A whole response (headers and body) may take this many times ``timeout_s``
# (120 s by default: a 50,000-row Polygon page on a slow link) before it is a timeout.
TOTAL_TIMEOUT_FACTOR = 4


class RestEvents(Protocol):
    """Counters the client reports to (the agent's Prometheus metrics, the CLI's totals)."""

    def request(self, provider: str, outcome: str, weight: int) -> None: ...


class _NoEvents:
    def request(self, provider: str, outcome: str, weight: int) -> None:
        return None


@attrs.frozen
class VenueRules:
    """What differs between venues in reading a response.

    provider: name for metrics and logs.
    used_weight: the venue's reported use of the current window from the
        response headers, or None (Binance ``X-MBX-USED-WEIGHT-1M``).
    error_text: (code, message) from a failed call's status and body, or None
        when the body is not the venue's error shape (the history half's ApiError).
    bans: statuses that mean "banned": pause like 429, count apart (Binance 418).
    """

    provider: str
    used_weight: Callable[[httpx.Headers], int | None]
    error_text: Callable[[int, bytes], tuple[str | None, str] | None]
    bans: frozenset[int] = frozenset()


@attrs.frozen
class RestResponse:
    body: bytes
    received_ns: int  # wall clock, ns, when the whole body had arrived
    headers: httpx.Headers = attrs.field(factory=httpx.Headers)
    sent_at: float = 0.0  # the budget's clock when the request was reserved


class RestClient:
    """GET requests under a venue's budget and error rules. Use as an async context manager.

    ``base_url``: the venue's REST root (config ``rest_url``); ``headers``: sent
    with every request (API keys); ``transport``: for tests only.
    """

    def __init__(
        self,
        base_url: str,
        rules: VenueRules,
        budget: RequestBudget,
        *,
        headers: Mapping[str, str] | None = None,
        events: RestEvents | None = None,
        timeout_s: float = 30.0,
        max_attempts: int = 5,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        rng: random.Random | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.rules = rules
        self.budget = budget
        self.events: RestEvents = events or _NoEvents()
        self.max_attempts = max_attempts
        self.total_timeout_s = TOTAL_TIMEOUT_FACTOR * timeout_s
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._rng = rng or random.Random()
        self._client = httpx.AsyncClient(
            headers=dict(headers or {}),
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
            follow_redirects=False,
        )
        self.rate_limited = 0  # 429s seen
        self.bans = 0  # 418s seen

    async def __aenter__(self) -> RestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    def url(self, path: str) -> str:
        """``path`` under the base URL; an absolute URL (a ``next_url``) is kept as it is."""
        if path.startswith(("http://", "https://")):
            return path
        return self.base_url + path

    async def get(
        self,
        path: str,
        params: Mapping[str, str | int] | None = None,
        *,
        weight: int = 1,
        validate: Callable[[bytes], str | None] | None = None,
    ) -> RestResponse:
        """GET ``path`` (or an absolute ``next_url``) and return the accepted body.

        ``weight``: the request's cost in the venue's budget (wire-formats.md
        1.7). ``validate(body)`` returns None for a readable page or the
        problem, which makes the attempt a failure to retry.

        Raises VenueRejected (4xx but 429/418), RestUnavailable (attempts
        used up on 5xx, timeouts, unreadable bodies).
        """
        url = self.url(path)
        backoff = Backoff(*self._backoff, rng=self._rng)
        failures = 0
        provider = self.rules.provider
        while True:
            sent_at = await self.budget.acquire(weight)
            problem = ""
            started = time.monotonic()
            try:
                # No params: None, not {} (httpx would replace the query of a
                # next_url with an empty one, dropping its cursor).
                # httpx's timeout is per read: a body trickled in small pieces
                # never trips it, so the whole response has a deadline too.
                response = None
                with trio.move_on_after(self.total_timeout_s):
                    response = await self._client.get(url, params=dict(params) if params else None)
                if response is None:
                    raise httpx.ReadTimeout(f"no whole response in {self.total_timeout_s:g} s")
            except httpx.TimeoutException as exc:
                problem = f"timeout: {type(exc).__name__}"
                outcome = "timeout"
            except httpx.TransportError as exc:
                problem = f"connection failed: {type(exc).__name__}: {exc}"
                outcome = "transport_error"
            else:
                received_ns = time.time_ns()
                self.budget.observe_round_trip(time.monotonic() - started)
                self._observe_weight(response, sent_at)
                status = response.status_code
                outcome = str(status)
                if status == 429 or status in self.rules.bans:
                    self._pause(response)
                    self.events.request(provider, outcome, weight)
                    continue
                if 200 <= status < 300:
                    body = response.content
                    problem = (validate(body) or "") if validate is not None else ""
                    if not problem:
                        self.events.request(provider, "ok", weight)
                        return RestResponse(body, received_ns, response.headers, sent_at)
                    outcome = "unreadable"
                elif status >= 500:
                    problem = f"HTTP {status}"
                else:
                    self.events.request(provider, outcome, weight)
                    found = self.rules.error_text(status, response.content)
                    code, text = found if found is not None else (None, response.text[:200])
                    raise VenueRejected(status, code, text)
            self.events.request(provider, outcome, weight)
            failures += 1
            if failures >= self.max_attempts:
                raise RestUnavailable(f"GET {_shown(url)}: {problem} ({failures} attempts)")
            delay = backoff.next_delay()
            log.info("rest.retry", url=_shown(url), problem=problem, retry_in_s=round(delay, 3))
            await trio.sleep(delay)

    def _observe_weight(self, response: httpx.Response, sent_at: float) -> None:
        used = self.rules.used_weight(response.headers)
        if used is not None:
            self.budget.observe_used(used, sent_at)

    def _pause(self, response: httpx.Response) -> None:
        ban = response.status_code in self.rules.bans
        header = response.headers.get("retry-after")
        seconds, note = retry_after_s(header)
        self.budget.pause(seconds, ban=ban)
        if ban:
            self.bans += 1
        else:
            self.rate_limited += 1
        unusual = {"retry_after_header": header[:64], "note": note} if note else {}
        log.warning(
            "rest.rate_limited",
            provider=self.rules.provider,
            status=response.status_code,
            retry_after_s=seconds,
            **unusual,
        )


def readable_as(decoder: msgspec.json.Decoder[Any], what: str) -> Callable[[bytes], str | None]:
    """A ``validate`` for :meth:`RestClient.get`: None when ``decoder`` reads the body,
    else ``"not <what>: <why>"`` (a truncated body, an error object on a 200)."""

    def problem(body: bytes) -> str | None:
        try:
            decoder.decode(body)
        except msgspec.DecodeError as exc:
            return f"not {what}: {exc}"
        return None

    return problem


def retry_after_s(value: str | None, now: float | None = None) -> tuple[float, str]:
    """``Retry-After`` (seconds, or an HTTP-date, RFC 9110 10.2.3) as the pause
    to take, in seconds, and a note when the header was not used as sent ("").

    Both venues send seconds (wire-formats.md 1.8, 2.6); a proxy may send a
    date. Missing, unreadable or negative: DEFAULT_RETRY_AFTER_S. Otherwise
    held within MIN_RETRY_AFTER_S .. MAX_RETRY_AFTER_S (``inf``, ``1e308``
    and a date years ahead paused all REST work for ever). ``now``: wall
    clock for a date (``time.time()``).
    """
    if value is None:
        return DEFAULT_RETRY_AFTER_S, "no Retry-After"
    text = value.strip()
    seconds: float | None
    try:
        seconds = float(text)
    except ValueError:
        until = _seconds_until_date(text, time.time() if now is None else now)
        seconds = None if until is None else max(0.0, until)  # a date already past: now
    if seconds is None or math.isnan(seconds) or seconds < 0:
        return DEFAULT_RETRY_AFTER_S, f"not a pause: waiting {DEFAULT_RETRY_AFTER_S:g} s"
    if seconds > MAX_RETRY_AFTER_S:
        return (
            MAX_RETRY_AFTER_S,
            f"capped at {MAX_RETRY_AFTER_S:g} s (3 days, Binance's longest ban)",
        )
    if seconds < MIN_RETRY_AFTER_S:
        return MIN_RETRY_AFTER_S, f"raised to {MIN_RETRY_AFTER_S:g} s"
    return seconds, ""


def _seconds_until_date(text: str, now: float) -> float | None:
    """Seconds from ``now`` to an HTTP-date (``Wed, 21 Oct 2015 07:28:00 GMT``), or None."""
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": UTC (RFC 5322 3.3)
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp() - now  # negative for a date already past


def _shown(url: str) -> str:
    """A URL for a log line: without its query (a cursor is long and says nothing)."""
    return url.split("?", 1)[0]
