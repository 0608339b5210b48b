"""Polygon subscriptions change live: reloads and a silently dropped subscription.

Against the fake Polygon and a real PostgreSQL: a reload that only changes a
named source's tickers sends ``subscribe`` / ``unsubscribe`` (each param
confirmed by its status) instead of reconnecting, and a stream the venue
stopped sending is unsubscribed and subscribed again on the same connection.
Polygon allows one connection per key, so a reconnect would be a hole for
every ticker: the venue must never see the client close its connection.
"""

from __future__ import annotations

import attrs
import pytest
import trio

from mdagent.config import Config, SourceConfig
from mdagent.testing.polygon.venue import FakePolygon
from tests.agent_support import (
    DATA_AFTER_CHANGE_S,
    LOADED_LOOP_SLACK_S,
    aquery,
    make_config,
    polygon_source,
    query,
    running_agent,
    wait_until,
)
from tests.test_agent_polygon import KEY, KEY_ENV, market_clock, stored_as_sent

STEADY = ["AAPL", "MSFT", "SPY", "IBM"]
TOGGLED = ["GTE", "BRK.A"]
CHANNELS = ["T", "Q"]
RELOADS = 12


def fake_polygon(monkeypatch: pytest.MonkeyPatch, tickers: list[str], seed: int) -> FakePolygon:
    """The fake at 1,500 events/s on a stepping market clock; the agent's key in the env."""
    monkeypatch.setenv(KEY_ENV, KEY)
    return FakePolygon(
        symbols=tickers, api_key=KEY, seed=seed, events_per_s=1500, clock_ns=market_clock()
    )


def with_tickers(config: Config, tickers: list[str]) -> Config:
    source: SourceConfig = attrs.evolve(config.sources[0], symbols=tuple(tickers))
    return attrs.evolve(config, sources=(source,))


async def stored_trades(dsn: str, ticker: str) -> int:
    rows = await aquery(dsn, "SELECT count(*) FROM trades WHERE symbol = %s", ticker)
    return int(rows[0][0])


async def test_reloads_keep_the_one_connection_and_lose_nothing(
    fresh_db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = fresh_db_dsn
    venue = fake_polygon(monkeypatch, STEADY + TOGGLED, seed=12)
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            ws_url, _rest = await nursery.start(venue.serve)
            source = polygon_source(ws_url, STEADY, CHANNELS, api_key_env=KEY_ENV, name="poly")
            config = make_config([source])
            async with running_agent(config, dsn) as agent:
                await wait_until(lambda: venue.stats()["connections_open"] == 1)
                slowest = 0.0
                for reload in range(RELOADS):
                    extra = TOGGLED[reload // 2 % len(TOGGLED)]
                    adding = reload % 2 == 0
                    before = await stored_trades(dsn, extra)
                    started = trio.current_time()
                    await agent.apply_config(
                        with_tickers(config, [*STEADY, extra] if adding else STEADY)
                    )
                    assert agent.supervisor is not None
                    assert agent.supervisor.running["poly"].symbols == tuple(
                        [*STEADY, extra] if adding else STEADY
                    )
                    if adding:
                        # The added ticker's data is in the database soon (printed).
                        with trio.fail_after(DATA_AFTER_CHANGE_S):
                            while await stored_trades(dsn, extra) <= before:
                                await trio.sleep(0.02)
                        slowest = max(slowest, trio.current_time() - started)
                print(f"{RELOADS} reloads; slowest added ticker: {slowest:.3f} s after its reload")
                venue.stall(3600)
                problems = await stored_as_sent(dsn, venue, STEADY, CHANNELS)
                stats = venue.stats()
                # One connection for the whole run, never closed.
                assert stats["connections"] == 1, stats["disconnect_reasons"]
                assert stats["connections_open"] == 1
                assert stats["disconnect_reasons"] == {}
                assert agent.supervisor is not None
                assert agent.supervisor.tasks["poly"].connects == 1
            nursery.cancel_scope.cancel()
    # Every trade and quote of the unchanged tickers the venue sent: stored once.
    assert problems == []
    assert query(dsn, "SELECT count(*) FROM dead_letter") == [(0,)]


async def test_silent_subscription_is_subscribed_again_on_the_one_connection(
    fresh_db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = fresh_db_dsn
    venue = fake_polygon(monkeypatch, STEADY, seed=13)
    quiet_s = 1.5
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            ws_url, _rest = await nursery.start(venue.serve)
            source = polygon_source(
                ws_url, STEADY, CHANNELS, api_key_env=KEY_ENV, name="poly", quiet_time_s=quiet_s
            )
            async with running_agent(make_config([source]), dsn) as agent:
                await wait_until(lambda: all(venue.truth.trades(t) for t in STEADY))
                resubscribes = agent.metrics.stream_resubscribes.labels("poly")
                venue.set_faults(silent_streams=("T.MSFT",), silent_until_resubscribed=True)
                dropped_at = trio.current_time()
                await wait_until(lambda: resubscribes._value.get() >= 1, poll=0.01)
                # Within a quiet time and the rule's 1 s cadence (plus a loaded
                # machine's lag), on the same connection (asserted below).
                assert trio.current_time() - dropped_at <= quiet_s + 1.5 + LOADED_LOOP_SLACK_S
                before = await stored_trades(dsn, "MSFT")
                with trio.fail_after(DATA_AFTER_CHANGE_S):
                    while await stored_trades(dsn, "MSFT") <= before:
                        await trio.sleep(0.05)
                venue.stall(3600)
                problems = await stored_as_sent(dsn, venue, STEADY, CHANNELS)
                stats = venue.stats()
                assert stats["connections"] == 1 and stats["disconnect_reasons"] == {}
            nursery.cancel_scope.cancel()
    assert problems == []
