"""End to end: the agent against the fake Polygon/Massive venue and a real PostgreSQL.

Ground truth is what the venue says its stream sent (``venue.truth``); the
database must hold exactly that, once, with exact values, keep the newest
version of every re-sent bar, put what it cannot parse in ``dead_letter`` and
record every hole a reconnect leaves as a ``fetch_jobs`` row.

Most tests use a ``SteppingClock``: the venue's content *and* event times are
then a function of the seed and the step count only, so a run is reproducible
and market time runs fast enough for minute bars to close within seconds.
Tests about reconnect gaps use the wall clock instead, because the normalizer
compares event times with receive times there.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio_websocket

from mdagent.config import HttpConfig
from mdagent.db.copy_writer import CopyWriter, WriteResult
from mdagent.pipeline.agent import Agent
from mdagent.pipeline.batches import WriteBatch
from mdagent.providers.polygon import parse_trades_page
from mdagent.records import Trade
from mdagent.testing.polygon.marketgen import (
    NS_PER_MS,
    SteppingClock,
    StockBar,
    StockQuote,
    StockTrade,
    WsEvent,
)
from mdagent.testing.polygon.venue import FakePolygon, PolygonFaults
from tests.agent_support import (
    aquery,
    make_config,
    polygon_source,
    query,
    running_agent,
    settle,
    wait_until,
)

KEY = "polygon-test-key"
KEY_ENV = "MDAGENT_TEST_POLYGON_KEY"
TICKERS = ["AAPL", "MSFT", "SPY", "IBM", "GTE"]
ALL_CHANNELS = ["T", "Q", "AM", "A"]
INTERVALS = {"AM": "1m", "A": "1s"}
# A trading afternoon (UTC), far from midnight: no daily sequence reset mid-test.
AFTERNOON_NS = int(datetime(2026, 3, 3, 15, 0, tzinfo=UTC).timestamp()) * 10**9
MIDNIGHT_NS = int(datetime(2026, 3, 4, tzinfo=UTC).timestamp()) * 10**9


def market_clock(start_ns: int = AFTERNOON_NS, step_ms: int = 50) -> SteppingClock:
    """Every generated event is ``step_ms`` of market time: minutes pass in seconds."""
    return SteppingClock(start_ns=start_ns, step_ns=step_ms * NS_PER_MS)


# -- ground truth vs the database -----------------------------------------------------------


@attrs.frozen
class Truth:
    """A copy of what the venue's stream sent, taken in the trio thread (the venue mutates it)."""

    trades: dict[str, list[StockTrade]]
    quotes: dict[str, list[StockQuote]]
    bars: dict[tuple[str, str], list[StockBar]]  # (ticker, ev) -> latest version of each bar

    @classmethod
    def of(cls, venue: FakePolygon, tickers: Iterable[str], channels: Iterable[str]) -> Truth:
        tickers, channels = list(tickers), set(channels)
        return cls(
            trades={t: venue.truth.trades(t) for t in tickers} if "T" in channels else {},
            quotes={t: venue.truth.quotes(t) for t in tickers} if "Q" in channels else {},
            bars={
                (t, ev): venue.truth.bars(t, ev)
                for t in tickers
                for ev in ("AM", "A")
                if ev in channels
            },
        )


def _expected_trade(t: StockTrade, ts_ns: int) -> tuple[Any, ...]:
    return (
        t.natural_id,
        Decimal(t.price_text),
        t.price_text,
        Decimal(t.size_text),
        t.size_text,
        t.exchange,
        t.tape,
        list(t.conditions) if t.conditions else None,
        t.trf_id,
        t.seq,
        t.t_ms,
        ts_ns,
    )


def stream_trade(t: StockTrade) -> tuple[Any, ...]:
    """The row of a trade stored from the stream: ``t`` is ms, so ``ts_ns`` is whole ms."""
    return _expected_trade(t, t.t_ms * NS_PER_MS)


def rest_trade(t: StockTrade) -> tuple[Any, ...]:
    """The row of a trade stored from REST: the exact nanosecond ``sip_timestamp``."""
    return _expected_trade(t, t.sip_ns)


_TRADE_SQL = (
    "SELECT trade_id, price, price::text, size, size::text, exchange, tape, conditions, trf_id,"
    " seq, (extract(epoch FROM ts) * 1000)::bigint, ts_ns FROM trades"
    " WHERE provider = 'polygon' AND symbol = %s AND channel = 'T'"
)


def _expected_quote(q: StockQuote) -> tuple[Any, ...]:
    return (
        q.seq,
        Decimal(q.bid_text),
        q.bid_text,
        Decimal(q.bid_size),
        str(q.bid_size),
        Decimal(q.ask_text),
        q.ask_text,
        Decimal(q.ask_size),
        str(q.ask_size),
        q.bid_exchange,
        q.ask_exchange,
        None if q.condition is None else [q.condition],
        list(q.indicators) if q.indicators else None,
        q.tape,
        q.t_ms * NS_PER_MS,
    )


_QUOTE_SQL = (
    "SELECT seq, bid_price, bid_price::text, bid_size, bid_size::text, ask_price,"
    " ask_price::text, ask_size, ask_size::text, bid_exchange, ask_exchange, conditions,"
    " indicators, tape, ts_ns FROM quotes"
    " WHERE provider = 'polygon' AND symbol = %s AND channel = 'Q'"
)


def _expected_bar(b: StockBar) -> tuple[Any, ...]:
    bar = b.bar
    return (
        bar.start_ms,
        bar.end_ms,
        bar.open,
        bar.high,
        bar.low,
        bar.close,
        bar.volume_text,
        bar.vwap,
        None,  # the stream's bars carry no trade count
        False,  # Polygon bars are never final: a correction may still come
    )


_BAR_SQL = (
    "SELECT (extract(epoch FROM ts) * 1000)::bigint, (extract(epoch FROM close_ts) * 1000)::bigint,"
    " open::text, high::text, low::text, close::text, volume::text, vwap::text, trade_count,"
    " final FROM candles WHERE provider = 'polygon' AND symbol = %s AND interval = %s"
)


def diff_rows(
    label: str, expected: dict[Any, tuple[Any, ...]], stored: list[tuple[Any, ...]]
) -> list[str]:
    """Problems between the expected rows (by key, the first column) and the stored ones."""
    problems = []
    twice = [k for k, n in Counter(r[0] for r in stored).items() if n > 1]
    if twice:
        problems.append(f"{label}: {len(twice)} stored more than once, e.g. {twice[:3]}")
    by_key = {r[0]: tuple(r) for r in stored}
    missing = sorted(expected.keys() - by_key.keys())
    if missing:
        problems.append(f"{label}: {len(missing)} of {len(expected)} missing, e.g. {missing[:3]}")
    extra = sorted(by_key.keys() - expected.keys())
    if extra:
        problems.append(f"{label}: {len(extra)} never sent, e.g. {extra[:3]}")
    wrong = [
        (by_key[k], expected[k])
        for k in expected.keys() & by_key.keys()
        if by_key[k] != expected[k]
    ]
    if wrong:
        problems.append(
            f"{label}: {len(wrong)} differ, e.g. stored {wrong[0][0]} != sent {wrong[0][1]}"
        )
    return problems


def db_problems(dsn: str, truth: Truth) -> list[str]:
    """Everything in which the database differs from what the stream sent (blocking)."""
    problems = []
    for ticker, trades in truth.trades.items():
        by_id = {t.natural_id: stream_trade(t) for t in trades}
        problems += diff_rows(f"T.{ticker}", by_id, query(dsn, _TRADE_SQL, ticker))
    for ticker, quotes in truth.quotes.items():
        by_seq = {q.seq: _expected_quote(q) for q in quotes}
        problems += diff_rows(f"Q.{ticker}", by_seq, query(dsn, _QUOTE_SQL, ticker))
    for (ticker, ev), bars in truth.bars.items():
        by_start = {b.start_ms: _expected_bar(b) for b in bars}
        rows = query(dsn, _BAR_SQL, ticker, INTERVALS[ev])
        problems += diff_rows(f"{ev}.{ticker}", by_start, rows)
    return problems


async def stored_as_sent(
    dsn: str, venue: FakePolygon, tickers: list[str], channels: list[str], timeout: float = 20.0
) -> list[str]:
    """Wait (bounded) until the database holds exactly what the venue sent; the last diff."""

    async def check() -> list[str]:
        if not venue.settled():  # a write under way is recorded as sent when it ends
            return ["the venue is still sending"]
        truth = Truth.of(venue, tickers, channels)
        return await trio.to_thread.run_sync(db_problems, dsn, truth)

    return await settle(check, timeout=timeout)


def sent_everything(venue: FakePolygon, tickers: list[str], *, am_bars: int = 2) -> bool:
    """Every ticker sent ``am_bars`` minute bars, and bars of both kinds were corrected."""
    sent = venue.truth
    return (
        all(len(sent.bars(t, "AM")) >= am_bars for t in tickers)
        and all(len(sent.trades(t)) > 5 and len(sent.quotes(t)) > 5 for t in tickers)
        and any(b.version > 1 for t in tickers for b in sent.bar_sends(t, "A"))
        and any(b.version > 1 for t in tickers for b in sent.bar_sends(t, "AM"))
    )


def sample(agent: Agent, name: str, **labels: str) -> float:
    value = agent.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def http_get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.get(url)


# -- 1. exactly once, exact values, bars upserted ---------------------------------------------


async def test_all_channels_stored_exactly_once_with_exact_values(
    fresh_db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = fresh_db_dsn
    monkeypatch.setenv(KEY_ENV, KEY)
    venue = FakePolygon(
        symbols=TICKERS, api_key=KEY, seed=7, events_per_s=1500, clock_ns=market_clock()
    )
    with trio.fail_after(180):
        async with trio.open_nursery() as nursery:
            ws_url, _rest_url = await nursery.start(venue.serve)
            source = polygon_source(ws_url, TICKERS, ALL_CHANNELS, api_key_env=KEY_ENV)
            async with running_agent(make_config([source]), dsn) as agent:
                await wait_until(lambda: sent_everything(venue, TICKERS), timeout=60)
                venue.stall(3600)  # the venue goes quiet; the agent catches up
                problems = await stored_as_sent(dsn, venue, TICKERS, ALL_CHANNELS)
                assert agent.supervisor is not None
                connects = agent.supervisor.tasks[source.key].connects
            nursery.cancel_scope.cancel()

    assert problems == []
    # After the drain too: shutdown neither lost nor doubled anything.
    assert db_problems(dsn, Truth.of(venue, TICKERS, ALL_CHANNELS)) == []
    assert connects == 1
    # The bars the venue corrected exist once, holding the latest version (checked above).
    corrected = {
        (t, ev, b.start_ms)
        for t in TICKERS
        for ev in ("AM", "A")
        for b in venue.truth.bar_sends(t, ev)
        if b.version > 1
    }
    assert corrected
    n_bars = sum(len(venue.truth.bars(t, ev)) for t in TICKERS for ev in ("AM", "A"))
    assert query(dsn, "SELECT count(*) FROM candles") == [(n_bars,)]
    # Fractional sizes (ds) and TRF prints with sub-penny prices were part of the run.
    trades = [t for ticker in TICKERS for t in venue.truth.trades(ticker)]
    assert any(t.fractional for t in trades) and any(t.trf_id for t in trades)
    assert query(dsn, "SELECT count(*) FROM dead_letter") == [(0,)]
    assert query(dsn, "SELECT count(*) FROM fetch_jobs") == [(0,)]


# -- 2. wrong key: reported, retried slowly, recovered by a config change ---------------------


async def test_wrong_key_reported_retried_slowly_and_recovered_by_config(
    fresh_db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = fresh_db_dsn
    fixed_env = KEY_ENV + "_FIXED"
    monkeypatch.setenv(KEY_ENV, "not-the-key")
    venue = FakePolygon(symbols=["AAPL", "MSFT"], api_key=KEY, seed=3, events_per_s=500)
    with trio.fail_after(180):
        async with trio.open_nursery() as nursery:
            ws_url, _rest_url = await nursery.start(venue.serve)
            source = polygon_source(ws_url, ["AAPL", "MSFT"], ["T", "Q"], api_key_env=KEY_ENV)
            config = attrs.evolve(make_config([source]), http=HttpConfig(listen="127.0.0.1:0"))
            async with running_agent(config, dsn) as agent:
                readyz = f"http://127.0.0.1:{agent.http.port}/readyz"
                metrics_url = f"http://127.0.0.1:{agent.http.port}/metrics"
                key = source.key
                await wait_until(lambda: agent.health.stream(key).auth_failed, timeout=60)

                # Reported clearly: stream health, readiness, a metric by kind.
                stream = agent.health.streams[key]
                assert not stream.connected
                assert "auth_failed" in stream.last_error
                assert not agent.health.ready
                reply = await http_get(readyz)
                assert reply.status_code == 503
                problems = reply.json()["problems"]
                assert any(key in p and "authentication failed" in p for p in problems), problems
                labels = {"source": key, "kind": "auth_failed"}
                assert sample(agent, "mdagent_stream_errors_total", **labels) == 1
                body = (await http_get(metrics_url)).text
                assert 'kind="auth_failed"' in body

                # Retried slowly: over a few seconds (backoff 0.05 s would allow
                # dozens of attempts) the venue sees no second connection.
                await trio.sleep(3.0)  # a measurement window, not synchronisation
                assert venue.counters["connections"] == 1
                assert venue.counters["auth_failed"] == 1
                assert sample(agent, "mdagent_stream_errors_total", **labels) == 1
                assert (await http_get(readyz)).status_code == 503

                # The operator points the source at the right secret and reloads:
                # the changed source restarts at once (no 60 s auth back-off).
                monkeypatch.setenv(fixed_env, KEY)
                fixed = attrs.evolve(source, api_key_env=fixed_env)
                await agent.apply_config(attrs.evolve(config, sources=(fixed,)))
                await wait_until(lambda: agent.health.ready, timeout=60)
                await wait_until(
                    lambda: (
                        query(dsn, "SELECT count(*) FROM trades")[0][0] > 0
                        and query(dsn, "SELECT count(*) FROM quotes")[0][0] > 0
                    ),
                    timeout=60,
                )
                reply = await http_get(readyz)
                body = reply.json()
                assert (reply.status_code, body["ready"], body["problems"]) == (200, True, [])
                assert {(s["symbol"], s["channel"]) for s in body["streams"]} == {
                    (t, c) for t in ("AAPL", "MSFT") for c in ("T", "Q")
                }
                assert not agent.health.streams[key].auth_failed
                assert venue.counters["connections"] == 2
                assert venue.counters["auth_failed"] == 1
                venue.stall(3600)
                problems = await stored_as_sent(dsn, venue, ["AAPL", "MSFT"], ["T", "Q"])
            nursery.cancel_scope.cancel()
    assert problems == []


# -- 3. statuses mixed into data frames, unknown events, malformed elements --------------------

STATUS_ELEMENT = '{"ev":"status","status":"success","message":"subscribed to: T.NEWCO"}'


class StatusInDataFrames(FakePolygon):
    """Every injected bad element travels next to a status event in the same data frame."""

    def _bad_element(self, event: WsEvent, kind: int) -> str:
        return STATUS_ELEMENT + "," + super()._bad_element(event, kind)


async def test_mixed_frames_bad_elements_dead_lettered_stream_continues(
    fresh_db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = fresh_db_dsn
    monkeypatch.setenv(KEY_ENV, KEY)
    tickers = ["AAPL", "MSFT", "GTE"]
    venue = StatusInDataFrames(
        symbols=tickers,
        api_key=KEY,
        seed=5,
        events_per_s=1500,
        clock_ns=market_clock(),
        faults=PolygonFaults(malformed_every_frames=4),
    )
    with trio.fail_after(180):
        async with trio.open_nursery() as nursery:
            ws_url, _rest_url = await nursery.start(venue.serve)
            source = polygon_source(ws_url, tickers, ALL_CHANNELS, api_key_env=KEY_ENV)
            async with running_agent(make_config([source]), dsn) as agent:
                # Two rounds of every kind: bad price, missing sym, unknown ev, non-JSON frame.
                await wait_until(lambda: len(venue.truth.malformed) >= 8, timeout=60)
                venue.stall(3600)
                problems = await stored_as_sent(dsn, venue, tickers, ALL_CHANNELS)
                await wait_until(
                    lambda: (
                        query(dsn, "SELECT count(*) FROM dead_letter")[0][0]
                        >= len(venue.truth.malformed)
                    ),
                    timeout=60,
                )
                assert agent.supervisor is not None
                connects = agent.supervisor.tasks[source.key].connects
            nursery.cancel_scope.cancel()

    # Every good element of every frame is stored, exactly once.
    assert problems == []
    # The stream went on through every bad frame: one connection, no holes.
    assert connects == 1
    assert query(dsn, "SELECT count(*) FROM fetch_jobs") == [(0,)]
    # One dead letter per injected element (or whole non-JSON frame), with its
    # exact text and a reason naming the problem; the status was not one.
    prefix = STATUS_ELEMENT + ","
    expected = Counter(m.removeprefix(prefix) for m in venue.truth.malformed)
    assert sum(m.startswith(prefix) for m in venue.truth.malformed) >= 6
    rows = query(dsn, "SELECT provider, source, reason, payload FROM dead_letter")
    assert Counter(r[3] for r in rows) == expected
    assert all(r[0] == "polygon" for r in rows)
    reasons = {r[1]: r[2] for r in rows}
    assert set(reasons) == {"T", "Q", "ZZ", "?"}
    assert "invalid T event" in reasons["T"] and "`p`" in reasons["T"]
    assert "invalid Q event" in reasons["Q"] and "`sym`" in reasons["Q"]
    assert reasons["ZZ"] == "unknown event type `ev`='ZZ'"
    assert reasons["?"].startswith("frame is not a JSON array")
    assert not any("status" in r[3] for r in rows)


# -- 4. disconnects and duplicate frames -------------------------------------------------------


async def run_with_disconnects(
    dsn: str, venue: FakePolygon, tickers: list[str], disconnects: int
) -> tuple[int, int, list[str], float]:
    """Stream through ``disconnects`` fault disconnects, then one clean connection.

    Returns (disconnects seen, connections made, problems, duplicates dropped).
    """
    source = polygon_source(venue.ws_url, tickers, ALL_CHANNELS, api_key_env=KEY_ENV)
    async with running_agent(make_config([source]), dsn) as agent:
        assert agent.supervisor is not None
        task = agent.supervisor.tasks[source.key]
        await wait_until(lambda: venue.counters["fault_disconnects"] >= disconnects, timeout=60)
        # No await between reading the count and lifting the fault: none can slip in.
        done = venue.counters["fault_disconnects"]
        venue.set_faults(disconnect_every_frames=None)
        # Data flows on the last connection for every ticker and event type.
        await wait_until(lambda: task.connects == done + 1, timeout=60)
        events_then = venue.counters["events_sent"]
        await wait_until(lambda: venue.counters["events_sent"] > events_then + 1500, timeout=60)
        venue.stall(3600)
        problems = await stored_as_sent(dsn, venue, tickers, ALL_CHANNELS)
        connects = task.connects
        dropped = sum(
            sample(agent, "mdagent_duplicates_dropped_total", provider="polygon", channel=ch)
            for ch in ("T", "Q")
        )
    return done, connects, problems, dropped


def reconnect_gaps(dsn: str) -> dict[tuple[str, str], list[tuple[int, int]]]:
    rows = query(
        dsn,
        "SELECT symbol, channel, from_ts_ns, to_ts_ns FROM fetch_jobs"
        " WHERE provider = 'polygon' AND reason = 'reconnect' AND kind = 'gap'"
        " AND status = 'pending' AND from_seq IS NULL AND to_seq IS NULL",
    )
    gaps: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for symbol, channel, lo, hi in rows:
        gaps.setdefault((symbol, channel), []).append((lo, hi))
    return gaps


async def test_disconnects_and_duplicates_exactly_once_with_reconnect_gaps(
    fresh_db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = fresh_db_dsn
    monkeypatch.setenv(KEY_ENV, KEY)
    tickers = ["AAPL", "MSFT", "SPY"]
    faults = PolygonFaults(disconnect_every_frames=20, duplicate_every_frames=3)
    # Wall-clock event times: reconnect gaps compare them with receive times.
    venue = FakePolygon(symbols=tickers, api_key=KEY, seed=9, events_per_s=2000, faults=faults)
    with trio.fail_after(180):
        async with trio.open_nursery() as nursery:
            await nursery.start(venue.serve)
            started_ns = time.time_ns()
            done, connects, problems, dropped = await run_with_disconnects(dsn, venue, tickers, 4)
            nursery.cancel_scope.cancel()

    assert problems == []  # nothing lost, nothing twice, bars at their latest version
    assert connects == done + 1
    assert venue.counters["duplicate_frames"] > 0 and dropped > 0
    # Each reconnect leaves a time-range hole per ticker for T and Q, to backfill.
    gaps = reconnect_gaps(dsn)
    for ticker in tickers:
        for channel in ("T", "Q"):
            ranges = gaps.get((ticker, channel), [])
            assert ranges, (ticker, channel)
            assert all(started_ns < lo < hi < time.time_ns() for lo, hi in ranges), ranges
        # Quotes are never late: every reconnect opens exactly one quote gap.
        assert len(gaps[(ticker, "Q")]) == done, (ticker, gaps[(ticker, "Q")])
        assert len(gaps[(ticker, "T")]) <= done
    assert {ch for _t, ch in gaps} <= {"T", "Q", "AM", "A"}
    stray = query(
        dsn, "SELECT reason, count(*) FROM fetch_jobs WHERE reason <> 'reconnect' GROUP BY 1"
    )
    assert stray == []
    # A reconnect gap of a bar channel must be a valid fetch_jobs row, not a dead letter.
    assert query(dsn, "SELECT source, reason, payload FROM dead_letter") == []


async def test_reconnect_gap_kept_when_first_trade_after_it_is_late(
    fresh_db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Late trades (SIP time seconds in the past) are normal on Polygon. The hole a
    reconnect leaves must be recorded even when the first trade after it is late."""
    dsn = fresh_db_dsn
    monkeypatch.setenv(KEY_ENV, KEY)
    tickers = ["AAPL", "MSFT"]
    venue = FakePolygon(
        symbols=tickers,
        api_key=KEY,
        seed=13,
        events_per_s=2000,
        late_trade_ratio=0.5,
        faults=PolygonFaults(disconnect_every_frames=20),
    )
    with trio.fail_after(180):
        async with trio.open_nursery() as nursery:
            await nursery.start(venue.serve)
            done, _connects, problems, _dropped = await run_with_disconnects(dsn, venue, tickers, 3)
            nursery.cancel_scope.cancel()
    assert problems == []
    gaps = reconnect_gaps(dsn)
    counts = {(t, ch): len(gaps.get((t, ch), [])) for t in tickers for ch in ("T", "Q")}
    assert counts == {(t, ch): done for t in tickers for ch in ("T", "Q")}


# -- 5. the same trade from REST and from the stream -------------------------------------------


async def rest_trades(venue: FakePolygon, ticker: str) -> list[Trade]:
    """Every trade the venue's REST history holds for ``ticker``, parsed by the agent's parser."""
    found: list[Trade] = []
    url: str | None = f"{venue.rest_url}/v3/trades/{ticker}"
    params: dict[str, Any] = {"order": "asc", "limit": 50_000}
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as http:
        while url is not None:
            reply = await http.get(url, params=params)
            reply.raise_for_status()
            records, url = parse_trades_page(ticker, reply.content, time.time_ns())
            assert all(isinstance(r, Trade) for r in records), records
            found += [r for r in records if isinstance(r, Trade)]
            params = {}
    return found


async def drive_stream(venue: FakePolygon, params: str, trades: int) -> None:
    """Read the venue's stream (one plain client) until ``trades`` T events came."""
    async with trio_websocket.open_websocket_url(venue.ws_url, max_message_size=16 << 20) as ws:
        await ws.send_message(f'{{"action":"auth","params":"{KEY}"}}')
        await ws.send_message(f'{{"action":"subscribe","params":"{params}"}}')
        seen = 0
        while seen < trades:
            seen += str(await ws.get_message()).count('"ev":"T"')


def write(dsn: str, trades: list[Trade]) -> WriteResult:
    writer = CopyWriter(dsn)
    try:
        return writer.write(WriteBatch(trades=trades))
    finally:
        writer.close()


async def test_rest_and_stream_store_one_row_per_trade(
    fresh_db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = fresh_db_dsn
    monkeypatch.setenv(KEY_ENV, KEY)
    ticker = "AAPL"

    def twin() -> FakePolygon:
        # Same seed, same stepping clock: the very same trades, ids and timestamps.
        return FakePolygon(
            symbols=[ticker, "MSFT"],
            api_key=KEY,
            seed=17,
            events_per_s=800,
            clock_ns=market_clock(),
        )

    with trio.fail_after(180):
        async with trio.open_nursery() as nursery:
            # REST first: trades reach the database from /v3/trades before the stream.
            early = twin()
            await nursery.start(early.serve)
            await drive_stream(early, f"T.{ticker}", 150)
            from_rest = await rest_trades(early, ticker)
            assert len(from_rest) >= 150
            assert any(t.ts_ns % NS_PER_MS for t in from_rest)  # real nanoseconds
            result = await trio.to_thread.run_sync(write, dsn, from_rest)
            assert (result.trades_inserted, result.trades_duplicate) == (len(from_rest), 0)

            # Then the agent streams the same market (and more) from its twin.
            venue = twin()
            ws_url, _rest_url = await nursery.start(venue.serve)
            source = polygon_source(ws_url, [ticker], ["T"], api_key_env=KEY_ENV)
            rest_ids = {t.trade_id for t in from_rest}
            async with running_agent(make_config([source]), dsn) as agent:
                await wait_until(
                    lambda: len(venue.truth.trades(ticker)) >= len(from_rest) + 100, timeout=60
                )
                venue.stall(3600)
                # A write in flight when the stall began is recorded as sent
                # only once it completes: settled() says none is left.
                await wait_until(
                    lambda: (
                        venue.settled()
                        and query(
                            dsn,
                            "SELECT last_seq FROM stream_offsets WHERE provider = 'polygon'"
                            " AND symbol = %s AND channel = 'T'",
                            ticker,
                        )
                        == [(venue.truth.trades(ticker)[-1].seq,)]
                    ),
                    timeout=60,
                )
                slow = sample(agent, "mdagent_batches_committed_total", path="slow")
            sent = venue.truth.trades(ticker)
            assert rest_ids <= {t.natural_id for t in sent}

            # One row per trade; REST's rows keep REST's nanoseconds, the stream's
            # rows (trades only it delivered) have its millisecond times.
            expected = {t.natural_id: stream_trade(t) for t in sent}
            expected |= {t.natural_id: rest_trade(t) for t in sent if t.natural_id in rest_ids}
            stored = await aquery(dsn, _TRADE_SQL, ticker)
            assert diff_rows("T", expected, stored) == []

            # Stream first: REST brings the same trades again; none becomes a second row.
            again = await rest_trades(venue, ticker)
            known = {r[0] for r in stored}
            new = [t for t in again if t.trade_id not in known]  # generated, never streamed
            result = await trio.to_thread.run_sync(write, dsn, again)
            assert result.trades_inserted == len(new)
            assert result.trades_duplicate == len(again) - len(new)
            assert result.slow_path
            expected |= {t.trade_id: _rest_row(t) for t in new}
            assert diff_rows("T", expected, await aquery(dsn, _TRADE_SQL, ticker)) == []
            nursery.cancel_scope.cancel()
    # The agent's first batches met the REST rows: the writer's slow path, and
    # the metric must say so.
    assert slow >= 1


def _rest_row(t: Trade) -> tuple[Any, ...]:
    """The row of a REST-only trade, from the parsed record itself."""
    return (
        t.trade_id,
        Decimal(t.price),
        t.price,
        Decimal(t.size),
        t.size,
        t.exchange,
        t.tape,
        list(t.conditions) if t.conditions else None,
        t.trf_id,
        t.seq,
        t.ts_ns // NS_PER_MS,
        t.ts_ns,
    )


# -- sequence numbers restart every day ------------------------------------------------------


async def test_restart_after_midnight_keeps_the_new_days_data(
    fresh_db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Polygon sequence numbers restart each day. An agent restarted after midnight
    must store the new day's trades and quotes, whose sequence numbers are far
    below the previous day's."""
    dsn = fresh_db_dsn
    monkeypatch.setenv(KEY_ENV, KEY)
    tickers = ["AAPL", "MSFT"]
    # Market time starts 20 s before midnight UTC and runs ~30x faster than the wall.
    clock = market_clock(start_ns=MIDNIGHT_NS - 20 * 10**9, step_ms=20)
    venue = FakePolygon(symbols=tickers, api_key=KEY, seed=19, events_per_s=1500, clock_ns=clock)

    def new_day(t: StockTrade | StockQuote) -> bool:
        return t.sip_ns >= MIDNIGHT_NS

    def enough_of_new_day(since: dict[str, int]) -> bool:
        return all(
            sum(map(new_day, venue.truth.trades(t)[since.get(t, 0) :])) >= 20 for t in tickers
        )

    with trio.fail_after(180):
        async with trio.open_nursery() as nursery:
            ws_url, _rest_url = await nursery.start(venue.serve)
            source = polygon_source(ws_url, tickers, ["T", "Q"], api_key_env=KEY_ENV)
            config = make_config([source])
            async with running_agent(config, dsn):
                await wait_until(lambda: enough_of_new_day({}), timeout=60)
            # The first run crossed midnight and stored both days.
            before = {t: len(venue.truth.trades(t)) for t in tickers}
            quotes_before = {t: len(venue.truth.quotes(t)) for t in tickers}
            stored = await aquery(
                dsn,
                "SELECT count(*) FROM trades WHERE ts >= to_timestamp(%s)",
                MIDNIGHT_NS // 10**9,
            )
            assert stored[0][0] > 0

            async with running_agent(config, dsn):  # a restart, same day
                await wait_until(lambda: enough_of_new_day(before), timeout=60)
                venue.stall(3600)

                async def check() -> list[str]:
                    if not venue.settled():
                        return ["the venue is still sending"]
                    truth = Truth(
                        trades={t: venue.truth.trades(t)[before[t] :] for t in tickers},
                        quotes={t: venue.truth.quotes(t)[quotes_before[t] :] for t in tickers},
                        bars={},
                    )
                    return await trio.to_thread.run_sync(missing_after_restart, dsn, truth)

                problems = await settle(check, timeout=30)
            nursery.cancel_scope.cancel()
    assert problems == []


def missing_after_restart(dsn: str, truth: Truth) -> list[str]:
    """What the second run was sent but did not store (rows of the first run are ignored)."""
    problems = []
    for ticker, trades in truth.trades.items():
        stored = {r[0] for r in query(dsn, _TRADE_SQL, ticker)}
        lost = [t.natural_id for t in trades if t.natural_id not in stored]
        if lost:
            problems.append(f"T.{ticker}: {len(lost)} of {len(trades)} missing, e.g. {lost[:3]}")
    for ticker, quotes in truth.quotes.items():
        stored = {r[0] for r in query(dsn, _QUOTE_SQL, ticker)}
        lost_seqs = [q.seq for q in quotes if q.seq not in stored]
        if lost_seqs:
            problems.append(f"Q.{ticker}: {len(lost_seqs)} of {len(quotes)} missing")
    return problems


async def test_fixed_secret_and_sighup_with_unchanged_config_recovers(
    fresh_db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The usual operator fix: correct the secret in the environment file, reload.

    The config is unchanged, but a source stuck in auth_failed is restarted by
    a reload instead of waiting for the slow auth retry.
    """
    monkeypatch.setenv(KEY_ENV, "not-the-key")
    venue = FakePolygon(symbols=["AAPL"], api_key=KEY, seed=4, events_per_s=300)
    with trio.fail_after(180):
        async with trio.open_nursery() as nursery:
            ws_url, _rest_url = await nursery.start(venue.serve)
            source = polygon_source(ws_url, ["AAPL"], ["T"], api_key_env=KEY_ENV)
            config = make_config([source])
            async with running_agent(config, fresh_db_dsn) as agent:
                await wait_until(lambda: agent.health.stream(source.key).auth_failed, timeout=60)
                monkeypatch.setenv(KEY_ENV, KEY)
                await agent.apply_config(config)
                await wait_until(lambda: agent.health.ready, timeout=60)
            nursery.cancel_scope.cancel()
    assert venue.counters["connections"] == 2


async def test_bars_missed_during_a_restart_are_a_gap(
    fresh_db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Polygon bars are never final. The bars that opened while the agent was down
    (and the last one it stored, which may have been corrected meanwhile) must still
    become a fetch_jobs gap after a restart, as the trades' hole does."""
    dsn = fresh_db_dsn
    monkeypatch.setenv(KEY_ENV, KEY)
    tickers = ["AAPL", "MSFT"]
    # Wall-clock times: second bars keep opening while the agent is down.
    venue = FakePolygon(symbols=tickers, api_key=KEY, seed=23, events_per_s=1000)
    bar_sql = (
        "SELECT symbol, max(extract(epoch FROM ts) * 1000)::bigint * %s FROM candles"
        " WHERE provider = 'polygon' AND interval = '1s' GROUP BY symbol"
    )

    async def newest_bars() -> dict[str, int]:
        return {symbol: ns for symbol, ns in await aquery(dsn, bar_sql, NS_PER_MS)}

    with trio.fail_after(180):
        async with trio.open_nursery() as nursery:
            ws_url, _rest_url = await nursery.start(venue.serve)
            config = make_config([polygon_source(ws_url, tickers, ["T", "A"], api_key_env=KEY_ENV)])
            async with running_agent(config, dsn):
                while len(await newest_bars()) < len(tickers):
                    await trio.sleep(0.1)
            before = await newest_bars()
            await trio.sleep(2.5)  # down: bars keep opening at the venue
            async with running_agent(config, dsn):
                while any(ns <= before[t] + 10**9 for t, ns in (await newest_bars()).items()):
                    await trio.sleep(0.1)
            after = await newest_bars()
            nursery.cancel_scope.cancel()

    gaps = reconnect_gaps(dsn)
    for ticker in tickers:
        [(lo, hi)] = gaps[(ticker, "A")]
        assert lo == before[ticker]  # from the last bar stored before the restart
        assert before[ticker] < hi < after[ticker]
