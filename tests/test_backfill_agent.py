"""Automatic gap repair inside the agent, end to end: fake venue (WebSocket + REST
over real sockets), the real agent, a real PostgreSQL."""

from __future__ import annotations

import pytest
import trio

from mdagent.backfill.worker import WorkerSettings
from mdagent.status import collect_status
from mdagent.testing.binance.venue import FakeBinance
from mdagent.testing.polygon.venue import FakePolygon, PolygonFaults
from tests.agent_support import (
    assert_trades_are_the_markets,
    binance_source,
    make_config,
    polygon_source,
    query,
    running_agent,
    wait_until,
)

FAST = WorkerSettings(workers=2, poll_s=0.1, lease_s=10.0, retry_initial_s=0.1, retry_max_s=1.0)


def trade_ids(dsn: str, symbol: str, channel: str = "trade") -> list[int]:
    rows = query(
        dsn,
        "SELECT trade_id::bigint FROM trades WHERE provider = 'binance' AND symbol = %s"
        " AND channel = %s ORDER BY 1",
        symbol,
        channel,
    )
    return [r[0] for r in rows]


def job_states(dsn: str, channel: str) -> list[str]:
    return [r[0] for r in query(dsn, "SELECT status FROM fetch_jobs WHERE channel = %s", channel)]


async def test_skipped_ids_and_two_disconnects_are_filled_from_rest(fresh_db_dsn: str) -> None:
    """Done-when 1: 500 ids never sent mid-stream, two disconnects: afterwards every
    id from first to last is stored exactly once, with the venue's values, and every
    gap job is done."""
    dsn = fresh_db_dsn
    venue = FakeBinance(symbols=["BTCUSDT"], seed=21, events_per_s=1500)
    base = venue.market("BTCUSDT").next_trade_id
    venue.set_faults(skip_trade_ids=(base + 1000, base + 1499))
    with trio.fail_after(180):
        async with trio.open_nursery() as nursery:
            ws_url, rest_url = await nursery.start(venue.serve)
            source = binance_source(ws_url, ["BTCUSDT"], ["trade", "aggTrade"], rest_url=rest_url)
            async with running_agent(make_config([source]), dsn, backfill=FAST):
                await wait_until(lambda: len(venue.truth.trade_ids("BTCUSDT")) > 2000)
                venue.set_faults(disconnect_every_frames=400)
                await wait_until(lambda: venue.counters["connections"] >= 3)
                venue.set_faults(disconnect_every_frames=None)
                await wait_until(lambda: len(venue.truth.trade_ids("BTCUSDT")) > 6000)
                venue.stall(3600)

                def complete() -> bool:
                    # (The venue records a frame as sent just after writing it.)
                    if not venue.settled():
                        return False
                    last = venue.truth.trade_ids("BTCUSDT")[-1]
                    ids = trade_ids(dsn, "BTCUSDT")
                    states = job_states(dsn, "trade") + job_states(dsn, "aggTrade")
                    return bool(ids) and ids[-1] == last and all(s == "done" for s in states)

                await wait_until(complete, timeout=60)
            nursery.cancel_scope.cancel()

    last = venue.truth.trade_ids("BTCUSDT")[-1]
    ids = trade_ids(dsn, "BTCUSDT")
    assert ids == list(range(ids[0], last + 1))  # every id, once
    assert venue.truth.skipped_trade_ids("BTCUSDT") == list(range(base + 1000, base + 1500))
    assert ids[0] <= base + 1000
    assert_trades_are_the_markets(dsn, venue.market("BTCUSDT"))
    jobs = query(
        dsn, "SELECT channel, status, from_seq, to_seq FROM fetch_jobs WHERE channel = 'trade'"
    )
    assert ("trade", "done", base + 1000, base + 1499) in jobs
    assert all(j[1] == "done" for j in jobs)
    assert venue.counters["connections"] >= 3  # two disconnects (their holes, if any, are jobs too)
    agg_ids = trade_ids(dsn, "BTCUSDT", "aggTrade")
    assert agg_ids == list(range(agg_ids[0], agg_ids[-1] + 1))


# -- Polygon ---------------------------------------------------------------------------------

POLYGON_KEY = "polygon-backfill-key"
POLYGON_KEY_ENV = "MDAGENT_TEST_POLYGON_BACKFILL_KEY"


def polygon_stored(dsn: str, ticker: str, table: str, key: str) -> list[tuple[object, ...]]:
    return query(
        dsn,
        f"SELECT {key}, ts_ns FROM {table} WHERE provider = 'polygon' AND symbol = %s ORDER BY 2, 1",
        ticker,
    )


async def test_polygon_reconnect_windows_filled_from_rest_v3(
    fresh_db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Done-when 4: every reconnect window is read from REST v3 to its end; afterwards the
    database holds every trade and quote the venue has between the first and the last
    stored one, once each (live and REST copies share the natural key), with REST's
    nanosecond timestamps."""
    dsn = fresh_db_dsn
    monkeypatch.setenv(POLYGON_KEY_ENV, POLYGON_KEY)
    tickers = ["AAPL", "MSFT"]
    fake = FakePolygon(
        symbols=tickers,
        api_key=POLYGON_KEY,
        seed=17,
        events_per_s=1500,
        late_trade_ratio=0.0,
        faults=PolygonFaults(disconnect_every_frames=25, disconnect_abort=True, away_steps=200),
    )
    with trio.fail_after(180):
        async with trio.open_nursery() as nursery:
            await nursery.start(fake.serve)
            source = polygon_source(
                fake.ws_url,
                tickers,
                ["T", "Q"],
                api_key_env=POLYGON_KEY_ENV,
                rest_url=fake.rest_url,
            )
            async with running_agent(make_config([source]), dsn, backfill=FAST):
                await wait_until(lambda: fake.counters["fault_disconnects"] >= 3, timeout=60)
                fake.set_faults(disconnect_every_frames=None)
                sent = fake.counters["events_sent"]
                await wait_until(lambda: fake.counters["events_sent"] > sent + 1000, timeout=60)
                fake.stall(3600)

                def repaired() -> bool:
                    states = [r[0] for r in query(dsn, "SELECT status FROM fetch_jobs")]
                    return len(states) >= 2 * len(tickers) and all(s == "done" for s in states)

                await wait_until(repaired, timeout=60)
            nursery.cancel_scope.cancel()

    assert fake.counters["rest_requests"] > 0
    ms = 1_000_000
    for ticker in tickers:
        market = fake.market(ticker)
        trades = polygon_stored(dsn, ticker, "trades", "trade_id")
        lo, hi = int(trades[0][1]) // ms, int(trades[-1][1]) // ms  # type: ignore[call-overload]
        expected = sorted(
            (t.natural_id, t.sip_ns // ms) for t in market.trades if lo <= t.sip_ns // ms <= hi
        )
        # Every trade in the span, once (the key is the id and the time in ms).
        assert sorted((i, int(ts) // ms) for i, ts in trades) == expected  # type: ignore[call-overload]
        # Copies read from REST keep the venue's nanoseconds (the stream sends ms).
        sip = {t.natural_id: t.sip_ns for t in market.trades}
        from_rest = [(i, ts) for i, ts in trades if int(ts) % ms]  # type: ignore[call-overload]
        assert from_rest, "no trade was filled from REST"
        assert all(sip[str(i)] == ts for i, ts in from_rest)
        quotes = polygon_stored(dsn, ticker, "quotes", "seq")
        qlo, qhi = int(quotes[0][1]) // ms, int(quotes[-1][1]) // ms  # type: ignore[call-overload]
        expected_q = sorted(
            (q.seq, q.sip_ns // ms) for q in market.quotes if qlo <= q.sip_ns // ms <= qhi
        )
        assert sorted((seq, int(ts) // ms) for seq, ts in quotes) == expected_q  # type: ignore[call-overload]


async def test_ids_that_never_existed_are_absent_and_book_ticker_unrecoverable(
    fresh_db_dsn: str,
) -> None:
    """Ids the venue skipped everywhere: the page read from the gap's first id starts
    after them, so they are recorded ``absent`` (once, never retried) and the gap is
    done. A bookTicker hole has no REST history: ``unrecoverable``, counted in metrics."""
    dsn = fresh_db_dsn
    venue = FakeBinance(symbols=["BTCUSDT"], seed=23, events_per_s=1000)
    base = venue.market("BTCUSDT").next_trade_id
    never = (base + 300, base + 309)
    venue.set_faults(skip_trade_ids=never, rest_absent_trade_ids=never)
    with trio.fail_after(180):
        async with trio.open_nursery() as nursery:
            ws_url, rest_url = await nursery.start(venue.serve)
            source = binance_source(ws_url, ["BTCUSDT"], ["trade", "bookTicker"], rest_url=rest_url)
            async with running_agent(make_config([source]), dsn, backfill=FAST) as agent:
                await wait_until(lambda: len(venue.truth.trade_ids("BTCUSDT")) > 1000)
                venue.set_faults(disconnect_every_frames=200)
                await wait_until(lambda: venue.counters["connections"] >= 2)
                venue.set_faults(disconnect_every_frames=None)
                await wait_until(lambda: len(venue.truth.book_update_ids("BTCUSDT")) > 2000)
                venue.stall(3600)

                def settled() -> bool:
                    states = dict(
                        query(dsn, "SELECT channel, array_agg(DISTINCT status) FROM fetch_jobs"
                              " WHERE parent_id IS NULL GROUP BY 1")
                    )  # fmt: skip
                    return states.get("trade") == ["done"] and states.get("bookTicker") == [
                        "unrecoverable"
                    ]

                await wait_until(settled, timeout=30)
                await trio.sleep(0.5)  # a few more polls: nothing may be claimed again
                metrics = agent.metrics.registry
                unrecoverable = metrics.get_sample_value(
                    "mdagent_backfill_jobs_finished_total",
                    {"provider": "binance", "channel": "bookTicker", "state": "unrecoverable"},
                )
                requests = metrics.get_sample_value(
                    "mdagent_backfill_requests_total", {"provider": "binance", "outcome": "ok"}
                )
                weight = metrics.get_sample_value(
                    "mdagent_backfill_weight_used_total", {"provider": "binance"}
                )
            nursery.cancel_scope.cancel()

    absent = query(
        dsn,
        "SELECT a.from_seq, a.to_seq, p.status, a.attempts FROM fetch_jobs a"
        " JOIN fetch_jobs p ON p.id = a.parent_id WHERE a.status = 'absent'",
    )
    assert absent == [(never[0], never[1], "done", 0)]
    ids = trade_ids(dsn, "BTCUSDT")
    assert set(range(ids[0], ids[-1] + 1)) - set(ids) == set(range(never[0], never[1] + 1))
    book_jobs = query(dsn, "SELECT attempts, error FROM fetch_jobs WHERE channel = 'bookTicker'")
    assert book_jobs and all(a == 1 and "no REST history" in e for a, e in book_jobs)
    assert unrecoverable == len(book_jobs)
    # `mdagent status` shows them: counted per state, and listed with the reason.
    shown = collect_status(make_config([], dsn=dsn))
    assert shown["queue"]["unrecoverable"] == len(book_jobs) and shown["queue"]["absent"] == 1
    assert {j["stream"] for j in shown["not_filled"]} == {"binance:BTCUSDT:bookTicker"}
    assert all("no REST history" in j["error"] for j in shown["not_filled"])
    # exchangeInfo (20) and at least one historicalTrades page (25).
    assert requests is not None and requests >= 2
    assert weight is not None and weight >= 45
