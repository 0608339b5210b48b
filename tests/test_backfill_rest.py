"""The REST client and the rate budget on trio's virtual clock (no real waiting).

The venue here is an ``httpx.MockTransport`` handler that answers from a script
and notes the virtual time of every request, so Retry-After, bans, backoff and
the weight budget are checked to the exact virtual second. (The fakes over real
sockets are exercised by the end-to-end tests.)
"""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs
import httpx
import pytest
import structlog
import trio
import trio.testing

from mdagent.backfill.binance import BinanceHistory
from mdagent.backfill.polygon import PolygonHistory, without_api_key
from mdagent.backfill.ratelimit import RequestBudget
from mdagent.backfill.rest import DEFAULT_RETRY_AFTER_S, MAX_RETRY_AFTER_S, MIN_RETRY_AFTER_S
from mdagent.db.jobs import Job
from mdagent.errors import RestUnavailable, VenueRejected

Answer = Callable[[httpx.Request], httpx.Response]


class ScriptedVenue:
    """Answers requests in order from ``script`` (the last answer repeats)."""

    def __init__(self, *script: Answer) -> None:
        self.script = list(script)
        self.seen: list[tuple[float, httpx.Request]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((trio.current_time(), request))
        answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        return answer(request)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    @property
    def times(self) -> list[float]:
        return [t for t, _r in self.seen]


def reply(status: int, body: bytes = b"[]", **headers: str) -> Answer:
    return lambda _request: httpx.Response(status, content=body, headers=headers)


def binance(venue: ScriptedVenue, budget: RequestBudget | None = None) -> BinanceHistory:
    return BinanceHistory(
        "http://venue.test",
        budget or RequestBudget(6000, 60.0, clock=trio.current_time),
        transport=venue.transport,
        rng=random.Random(1),
    )


def agg_job(**kw: object) -> Job:
    fields: dict[str, object] = {
        "id": 1, "provider": "binance", "symbol": "BTCUSDT", "channel": "aggTrade",
        "kind": "gap", "reason": "", "from_seq": 100, "to_seq": 101, "from_ts_ns": None,
        "to_ts_ns": None, "cursor": None, "attempts": 1,
    }  # fmt: skip
    fields.update(kw)
    return Job(**fields)  # type: ignore[arg-type]


AGGS = (
    b'[{"a":100,"p":"1.5","q":"2","f":7,"l":7,"T":1700000000000,"m":true,"M":true},'
    b'{"a":101,"p":"1.6","q":"3","f":8,"l":9,"T":1700000000001,"m":false,"M":true}]'
)


async def test_429_pauses_for_retry_after_then_succeeds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = ScriptedVenue(
        reply(429, b'{"code":-1003,"msg":"Too much"}', **{"Retry-After": "7"}), reply(200, AGGS)
    )
    history = binance(venue)
    page = await history.next_page(agg_job())
    assert [r.seq for r in page.records] == [100, 101]  # type: ignore[union-attr]
    assert page.cursor is None  # ids 100..101 all read
    assert venue.times[1] - venue.times[0] == pytest.approx(7.0)
    assert history.client.rate_limited == 1


async def test_418_stops_every_request_of_the_venue(autojump_clock: trio.testing.MockClock) -> None:
    venue = ScriptedVenue(
        reply(418, b'{"code":-1003,"msg":"banned"}', **{"Retry-After": "120"}), reply(200, AGGS)
    )
    history = binance(venue)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(history.next_page, agg_job())
        await trio.sleep(1.0)  # the ban is in force: a second worker starts now
        nursery.start_soon(history.next_page, agg_job(id=2))
    assert history.client.bans == 1
    # Nothing was sent during the ban, by either worker.
    assert venue.times[0] == pytest.approx(0.0)
    assert all(t >= 120.0 for t in venue.times[1:]) and len(venue.times) == 3


FAR_FUTURE_DATE = "Fri, 31 Dec 9999 23:59:59 GMT"


@pytest.mark.parametrize(
    ("status", "header", "pause_s", "note"),
    [
        (429, "inf", MAX_RETRY_AFTER_S, "capped at 259200 s"),
        (429, "1e308", MAX_RETRY_AFTER_S, "capped"),
        (418, "9" * 400, MAX_RETRY_AFTER_S, "capped"),
        (418, FAR_FUTURE_DATE, MAX_RETRY_AFTER_S, "capped"),
        (429, "nan", DEFAULT_RETRY_AFTER_S, "not a pause"),
        (429, "-5", DEFAULT_RETRY_AFTER_S, "not a pause"),
        (429, "0", MIN_RETRY_AFTER_S, "raised to 1 s"),
        (429, "Wed, 21 Oct 2015 07:28:00 GMT", MIN_RETRY_AFTER_S, "raised to 1 s"),
    ],
)
async def test_an_absurd_retry_after_is_held_to_a_sane_pause(
    autojump_clock: trio.testing.MockClock, status: int, header: str, pause_s: float, note: str
) -> None:
    """``Retry-After: inf`` (or 1e308, or a date in the year 9999) paused every
    REST request of the venue for ever: the backfill, gap repair and the
    instruments sync stopped for good. Now at most 3 days (Binance's longest
    ban), at least 1 s (``0`` looped as fast as the venue answered), one log
    line saying so, then the request is sent again."""
    venue = ScriptedVenue(reply(status, b'{"code":-1003,"msg":"x"}', **{"Retry-After": header}))
    venue.script.append(reply(200, AGGS))
    history = binance(venue)
    # Virtual time: before, the pause never ended (the test failed here, not hung).
    with structlog.testing.capture_logs() as logs, trio.fail_after(2 * MAX_RETRY_AFTER_S):
        page = await history.next_page(agg_job())
    assert [r.seq for r in page.records] == [100, 101]  # type: ignore[union-attr]
    assert venue.times[1] - venue.times[0] == pytest.approx(pause_s)
    limited = [e for e in logs if e["event"] == "rest.rate_limited"]
    assert len(limited) == 1 and note in limited[0]["note"], limited
    assert limited[0]["retry_after_s"] == pytest.approx(pause_s)


async def test_polygon_429_with_a_far_future_date_is_capped_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The same rule on Polygon's REST path (whether its 429 carries
    Retry-After is unconfirmed, wire-formats.md 2.6; a proxy's may)."""
    page = b'{"results":[],"status":"OK"}'
    venue = ScriptedVenue(
        reply(429, b'{"status":"ERROR","error":"x"}', **{"Retry-After": FAR_FUTURE_DATE}),
        reply(200, page),
    )
    history = PolygonHistory(
        "http://venue.test",
        "k",
        RequestBudget(None, clock=trio.current_time),
        transport=venue.transport,
    )
    job = Job(1, "polygon", "AAPL", "T", "gap", "", None, None, 1, 2, None, 1)
    with trio.fail_after(2 * MAX_RETRY_AFTER_S):
        done = await history.next_page(job)
    assert done.cursor is None
    assert venue.times[1] - venue.times[0] == pytest.approx(MAX_RETRY_AFTER_S)
    assert history.client.rate_limited == 1


async def test_5xx_and_truncated_bodies_are_retried_with_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = ScriptedVenue(reply(500, b"oops"), reply(200, AGGS[:40]), reply(503), reply(200, AGGS))
    history = binance(venue)
    page = await history.next_page(agg_job())
    assert len(page.records) == 2  # the truncated page was not taken for the last one
    gaps = [b - a for a, b in zip(venue.times, venue.times[1:], strict=False)]
    assert len(gaps) == 3 and all(g > 0 for g in gaps)
    assert gaps[2] > gaps[0]  # exponential, with jitter


async def test_unavailable_after_max_attempts(autojump_clock: trio.testing.MockClock) -> None:
    venue = ScriptedVenue(reply(502))
    history = binance(venue)
    with pytest.raises(RestUnavailable, match="HTTP 502 \\(5 attempts\\)"):
        await history.next_page(agg_job())
    assert len(venue.seen) == 5


async def test_other_4xx_ends_with_the_venue_code_and_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = ScriptedVenue(reply(400, b'{"code":-1121,"msg":"Invalid symbol."}'))
    with pytest.raises(VenueRejected) as caught:
        await binance(venue).next_page(agg_job())
    assert (caught.value.status, caught.value.code, caught.value.message) == (
        400,
        "-1121",
        "Invalid symbol.",
    )
    assert len(venue.seen) == 1  # not retried


async def test_weight_budget_is_never_exceeded_and_reported_use_counts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Workers share one budget: 30 requests of weight 25 under 100 per 10 s take
    8 windows, at most 4 requests in each; a venue-reported use (another process)
    is added to what was sent after the request that reported it."""
    budget = RequestBudget(100, 10.0, guard_s=0.25, clock=trio.current_time)
    sent: list[float] = []

    async def worker() -> None:
        for _ in range(10):
            await budget.acquire(25)
            sent.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(worker)
    windows: dict[int, int] = {}
    for t in sent:
        windows[int(t // 10)] = windows.get(int(t // 10), 0) + 25
    assert max(windows.values()) <= 100 and len(sent) == 30
    assert len(windows) == 8
    # Another process used 80 of the current window: one more request of 25 must wait.
    at = await budget.acquire(10)
    budget.observe_used(80, at)
    before = trio.current_time()
    await budget.acquire(25)
    assert trio.current_time() > before and trio.current_time() % 10 == pytest.approx(0.25)


async def test_polygon_key_in_a_header_never_in_a_url(
    autojump_clock: trio.testing.MockClock,
) -> None:
    page1 = (
        b'{"results":[{"exchange":4,"id":"1","price":1.5,"size":10,"sip_timestamp":1700000000000000001,'
        b'"sequence_number":5}],"next_url":"http://venue.test/v3/trades/AAPL?cursor=abc&apiKey=leak",'
        b'"status":"OK"}'
    )
    page2 = b'{"results":[],"status":"OK"}'
    venue = ScriptedVenue(reply(200, page1), reply(200, page2))
    history = PolygonHistory("http://venue.test", "sekrit", transport=venue.transport)
    job = Job(
        1,
        "polygon",
        "AAPL",
        "T",
        "gap",
        "",
        None,
        None,
        1_700_000_000_000_000_000,
        1_700_000_001_000_000_000,
        None,
        1,
    )
    first = await history.next_page(job)
    assert first.cursor == "url:http://venue.test/v3/trades/AAPL?cursor=abc"
    assert first.records[0].ts_ns == 1_700_000_000_000_000_001  # type: ignore[union-attr]
    second = await history.next_page(attrs.evolve(job, cursor=first.cursor))
    assert second.cursor is None
    # The next_url is followed as it is: its cursor reaches the venue.
    assert str(venue.seen[1][1].url) == "http://venue.test/v3/trades/AAPL?cursor=abc"
    for _t, request in venue.seen:
        assert request.headers["authorization"] == "Bearer sekrit"
        assert "sekrit" not in str(request.url) and "apiKey" not in str(request.url)
    assert without_api_key("http://h/p?a=1&apiKey=x&b=2") == "http://h/p?a=1&b=2"


async def test_default_host_asks_historical_trades_of_the_main_host(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The market-data-only default host lacks historicalTrades (wire-formats.md 1.7):
    with the default rest_url, trade pages come from api.binance.com, the rest from
    the default host; a configured rest_url serves everything."""
    trades = b'[{"id":100,"price":"1.5","qty":"2","quoteQty":"3","time":1700000000000,"isBuyerMaker":true,"isBestMatch":true}]'
    venue = ScriptedVenue(reply(200, trades), reply(200, AGGS))
    default = BinanceHistory(
        "https://data-api.binance.vision", transport=venue.transport, rng=random.Random(1)
    )
    await default.next_page(agg_job(channel="trade", from_seq=100, to_seq=100))
    await default.next_page(agg_job())
    hosts = [(r.url.host, r.url.path) for _t, r in venue.seen]
    assert hosts == [
        ("api.binance.com", "/api/v3/historicalTrades"),
        ("data-api.binance.vision", "/api/v3/aggTrades"),
    ]
    configured = ScriptedVenue(reply(200, trades))
    own = binance(configured)
    await own.next_page(agg_job(channel="trade", from_seq=100, to_seq=100))
    assert [r.url.host for _t, r in configured.seen] == ["venue.test"]
