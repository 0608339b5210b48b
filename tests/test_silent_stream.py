"""A subscription the venue dropped silently: found per stream, subscribed again, named meanwhile.

The fake Binance stops sending one stream (``silent_streams``) while the
connection and the source's other streams go on; a fresh SUBSCRIBE brings it
back (``silent_until_resubscribed``). The agent, with a short ``quiet_time_s``,
must subscribe it again on the live connection within about one quiet time,
name it in ``/readyz`` while it is missing, store its data again afterwards,
and lose nothing of the other streams.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import trio

from mdagent.config import HttpConfig
from mdagent.pipeline.agent import Agent
from mdagent.testing.binance.venue import FakeBinance
from tests.agent_support import (
    DATA_AFTER_CHANGE_S,
    LOADED_LOOP_SLACK_S,
    aquery,
    binance_source,
    make_config,
    running_agent,
    wait_until,
)
from tests.test_agent_binance import (
    assert_book_updates_match_venue,
    assert_trades_match_venue,
    caught_up,
)

SYMBOLS = ["AAAUSDT", "BBBUSDT", "CCCUSDT"]
SILENT = "bbbusdt@trade"
SILENT_NAME = "binance:BBBUSDT:trade"
QUIET_S = 1.5
# The rule runs once a second (stream.STREAM_CHECK_EVERY_S) and the silence
# starts at the stream's last record: detection is at most this late.
DETECTION_SLACK_S = 1.5


def all_flowing(agent: Agent) -> bool:
    streams = agent.health.per_stream.streams
    return all(
        # Flowing: delivered in at least two bursts (a pace; one burst is none).
        (stream := streams.get(("binance", symbol, "trade"))) is not None and stream.bursts >= 2
        for symbol in SYMBOLS
    )


@attrs.frozen
class Run:
    agent: Agent
    http: httpx.AsyncClient
    readyz: str

    def resubscribes(self) -> float:
        return float(self.agent.metrics.stream_resubscribes.labels("spot")._value.get())

    async def drop_and_wait_for_resubscribe(self, venue: FakeBinance, **faults: Any) -> None:
        """Drop the silent stream at the venue; the agent subscribes it again in time."""
        venue.set_faults(silent_streams=(SILENT,), **faults)
        dropped_at = trio.current_time()
        await wait_until(lambda: self.resubscribes() >= 1, poll=0.01)
        took = trio.current_time() - dropped_at
        print(f"resubscribed {took:.2f} s after the venue dropped it")
        assert took <= QUIET_S + DETECTION_SLACK_S + LOADED_LOOP_SLACK_S


@asynccontextmanager
async def running(dsn: str, venue: FakeBinance) -> AsyncIterator[Run]:
    """The venue and the agent on every symbol's trade and bookTicker, all trade streams flowing."""
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            ws_url, _rest = await nursery.start(venue.serve)
            source = binance_source(
                ws_url, SYMBOLS, ["trade", "bookTicker"], name="spot", quiet_time_s=QUIET_S
            )
            config = attrs.evolve(make_config([source]), http=HttpConfig(listen="127.0.0.1:0"))
            async with (
                running_agent(config, dsn) as agent,
                httpx.AsyncClient(timeout=30) as http,
            ):
                await wait_until(lambda: all_flowing(agent))
                yield Run(agent, http, f"http://127.0.0.1:{agent.http.port}/readyz")
            nursery.cancel_scope.cancel()


async def trade_count(dsn: str, symbol: str) -> int:
    rows = await aquery(
        dsn, "SELECT count(*) FROM trades WHERE symbol = %s AND channel = 'trade'", symbol
    )
    return int(rows[0][0])


def stream_detail(reply: httpx.Response) -> dict[tuple[str, str], dict[str, Any]]:
    return {(s["symbol"], s["channel"]): s for s in reply.json()["streams"]}


async def assert_back_and_nothing_lost(
    dsn: str, venue: FakeBinance, http: httpx.AsyncClient, readyz: str
) -> None:
    """The silent stream's data is stored again, /readyz is ready, every stream is healthy."""
    before = await trade_count(dsn, "BBBUSDT")
    with trio.fail_after(DATA_AFTER_CHANGE_S):
        while await trade_count(dsn, "BBBUSDT") <= before:
            await trio.sleep(0.05)
    with trio.fail_after(DATA_AFTER_CHANGE_S):
        while (reply := await http.get(readyz)).status_code != 200:
            await trio.sleep(0.05)
    detail = stream_detail(reply)
    assert set(detail) == {(s, c) for s in SYMBOLS for c in ("trade", "bookTicker")}
    assert {s["state"] for s in detail.values()} == {"ok"}
    assert all(s["events_total"] > 0 for s in detail.values())
    venue.stall(3600)
    await wait_until(lambda: caught_up(dsn, venue, SYMBOLS))


def assert_every_sent_event_stored_once(dsn: str, venue: FakeBinance) -> None:
    # The silent stream's unsent trades are no part of what the venue sent.
    for symbol in SYMBOLS:
        assert_trades_match_venue(dsn, venue, symbol)
        assert_book_updates_match_venue(dsn, venue, symbol)


async def test_silent_stream_is_subscribed_again_within_the_quiet_time(
    fresh_db_dsn: str,
) -> None:
    """The venue drops one subscription; a fresh SUBSCRIBE on the live connection restores it."""
    dsn = fresh_db_dsn
    venue = FakeBinance(symbols=SYMBOLS, seed=8, events_per_s=600)
    async with running(dsn, venue) as run:
        assert (await run.http.get(run.readyz)).status_code == 200
        await run.drop_and_wait_for_resubscribe(venue, silent_until_resubscribed=True)
        await assert_back_and_nothing_lost(dsn, venue, run.http, run.readyz)
        stats = venue.stats()
        # Subscribed again on the same connection: never reconnected.
        assert stats["connections_total"] == 1, stats["disconnect_reasons"]
        assert run.resubscribes() == 1
    assert_every_sent_event_stored_once(dsn, venue)


async def test_still_silent_after_resubscribe_named_then_connection_replaced(
    fresh_db_dsn: str,
) -> None:
    """A resubscribe does not help: /readyz names the stream, then make-before-break
    replaces the connection, and the new one delivers it; nothing else is lost."""
    dsn = fresh_db_dsn
    venue = FakeBinance(symbols=SYMBOLS, seed=9, events_per_s=600)
    async with running(dsn, venue) as run:
        await run.drop_and_wait_for_resubscribe(venue)
        # Missing after the resubscribe: named, not ready.
        reply = await run.http.get(run.readyz)
        assert reply.status_code == 503
        named = [p for p in reply.json()["problems"] if SILENT_NAME in p]
        assert named and "resubscribed" in named[0], reply.json()
        assert stream_detail(reply)[("BBBUSDT", "trade")]["state"] == "resubscribed"
        # A fresh connection would have it: the agent must open one.
        venue.set_faults(silent_until_resubscribed=True)
        seamless = run.agent.metrics.stream_rotations.labels("spot", "seamless")
        await wait_until(lambda: seamless._value.get() == 1, timeout=QUIET_S + 8)
        await assert_back_and_nothing_lost(dsn, venue, run.http, run.readyz)
        stats = venue.stats()
        assert stats["connections_total"] == 2
        assert stats["disconnect_reasons"] == {"client closed": 1}
        assert run.resubscribes() == 1
    assert_every_sent_event_stored_once(dsn, venue)


async def test_bursty_illiquid_stream_is_not_resubscribed_in_a_loop(fresh_db_dsn: str) -> None:
    """A symbol that trades in short bursts with long pauses (many records at once,
    then nothing for longer than the quiet time) is quiet, not dropped: once a
    pause has shown its rhythm, later pauses are neither resubscribed, nor
    replaced, nor named in /readyz. Counting its records (not its bursts) made
    every pause look like a drop: a resubscribe and a reconnect per burst."""
    dsn = fresh_db_dsn
    venue = FakeBinance(symbols=SYMBOLS, seed=10, events_per_s=600)
    burst_s, pause_s = 0.2, 2.6 * QUIET_S

    async with running(dsn, venue) as run:
        rotations = run.agent.metrics.stream_rotations

        def acted() -> tuple[float, float]:
            replaced = sum(
                rotations.labels("spot", outcome)._value.get()
                for outcome in ("seamless", "bounded", "failed")
            )
            return run.resubscribes(), replaced

        async def one_pause(*, watch: bool) -> None:
            venue.set_faults(silent_streams=(SILENT,))
            ends = trio.current_time() + pause_s
            while trio.current_time() < ends:
                if watch:
                    reply = await run.http.get(run.readyz)
                    assert reply.status_code == 200, reply.json()["problems"]
                await trio.sleep(0.1)
            venue.set_faults(silent_streams=())
            await trio.sleep(burst_s)

        # The first pause is the stream's first: nothing yet says it is quiet.
        await one_pause(watch=False)
        after_first = acted()
        assert after_first[0] <= 1 and after_first[1] <= 1, after_first
        for _ in range(3):
            await one_pause(watch=True)
        assert acted() == after_first
        streams = run.agent.health.per_stream.streams
        assert streams[("binance", "BBBUSDT", "trade")].state == "ok"
        assert venue.stats()["connections_total"] == 1 + after_first[1]


async def test_a_symbol_that_trades_once_costs_no_reconnect(fresh_db_dsn: str) -> None:
    """A symbol quiet from the start trades once, then is quiet again: one burst
    shows no pace, so it is subscribed again but its connection is not replaced
    (on Polygon, one connection per key, a replacement is a gap on every ticker)."""
    dsn = fresh_db_dsn
    # Slow enough that the one trade let through is alone in its burst.
    venue = FakeBinance(symbols=SYMBOLS, seed=11, events_per_s=30)
    venue.set_faults(silent_streams=(SILENT,))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            ws_url, _rest = await nursery.start(venue.serve)
            source = binance_source(
                ws_url, SYMBOLS, ["trade", "bookTicker"], name="spot", quiet_time_s=QUIET_S
            )
            async with running_agent(make_config([source]), dsn) as agent:
                streams = agent.health.per_stream.streams
                await wait_until(lambda: ("binance", "BBBUSDT", "trade") in streams)
                silent = streams[("binance", "BBBUSDT", "trade")]
                await wait_until(lambda: silent.state == "quiet", timeout=4 * QUIET_S + 5)
                venue.set_faults(silent_streams=())
                await wait_until(lambda: silent.events > 0, poll=0.002)
                venue.set_faults(silent_streams=(SILENT,))
                assert silent.bursts == 1
                await wait_until(lambda: silent.state == "quiet", timeout=4 * QUIET_S + 5)
                resubscribes = agent.metrics.stream_resubscribes.labels("spot")._value.get()
                assert resubscribes == 2
                rotations = agent.metrics.stream_rotations
                assert all(
                    rotations.labels("spot", outcome)._value.get() == 0
                    for outcome in ("seamless", "bounded", "failed")
                )
                assert venue.stats()["connections_total"] == 1
            nursery.cancel_scope.cancel()
