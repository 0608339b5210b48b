"""Reload at symbol granularity: added symbols are subscribed on the live connection.

The agent runs against the fake Binance venue and a real PostgreSQL; a reload
that only changes a named source's symbols sends SUBSCRIBE / UNSUBSCRIBE (each
reply checked by id) instead of reconnecting, so the unchanged symbols' data
has no hole and the venue never sees the client close a connection.
"""

from __future__ import annotations

import attrs
import trio

from mdagent.config import Config, SourceConfig
from mdagent.pipeline.agent import Agent
from mdagent.testing.binance.venue import FakeBinance
from tests.agent_support import (
    DATA_AFTER_CHANGE_S,
    aquery,
    binance_source,
    make_config,
    query,
    running_agent,
    wait_until,
)
from tests.test_agent_binance import (
    assert_book_updates_match_venue,
    assert_trades_match_venue,
    caught_up,
)

STEADY = [f"S{i:02d}USDT" for i in range(16)]
TOGGLED = [f"T{i:02d}USDT" for i in range(4)]
CHANNELS = ["trade", "bookTicker"]


def with_symbols(config: Config, symbols: list[str]) -> Config:
    source: SourceConfig = attrs.evolve(config.sources[0], symbols=tuple(symbols))
    return attrs.evolve(config, sources=(source,))


async def stored_count(dsn: str, symbol: str) -> int:
    rows = await aquery(
        dsn, "SELECT count(*) FROM trades WHERE symbol = %s AND channel = 'trade'", symbol
    )
    return int(rows[0][0])


async def toggle(
    agent: Agent,
    config: Config,
    venue: FakeBinance,
    dsn: str,
    steady: list[str],
    toggled: list[str],
    reloads: int,
) -> float:
    """Reload ``reloads`` times, adding then removing one of ``toggled`` in turn.

    Each added symbol's data must be in the database soon after its reload
    (DATA_AFTER_CHANGE_S; the slowest time is returned and printed), and the
    venue must list exactly the subscribed streams afterwards.
    """
    slowest = 0.0
    for reload in range(reloads):
        extra = toggled[reload // 2 % len(toggled)]
        adding = reload % 2 == 0
        symbols = [*steady, extra] if adding else steady
        before = await stored_count(dsn, extra)
        started = trio.current_time()
        await agent.apply_config(with_symbols(config, symbols))
        if adding:
            with trio.fail_after(DATA_AFTER_CHANGE_S):
                while await stored_count(dsn, extra) <= before:
                    await trio.sleep(0.02)
            slowest = max(slowest, trio.current_time() - started)
        subscribed = {s for c in venue.stats()["connections"] for s in c["streams"]}
        assert (f"{extra.lower()}@trade" in subscribed) == adding
    return slowest


async def test_fifty_reloads_keep_the_connection_and_lose_nothing(fresh_db_dsn: str) -> None:
    dsn = fresh_db_dsn
    venue = FakeBinance(symbols=STEADY + TOGGLED, seed=12, events_per_s=3000)
    with trio.fail_after(150):
        async with trio.open_nursery() as nursery:
            ws_url, _rest = await nursery.start(venue.serve)
            config = make_config(
                [binance_source(ws_url, STEADY, CHANNELS, name="binance-spot", backfill=False)]
            )
            async with running_agent(config, dsn) as agent:
                await wait_until(lambda: venue.stats()["connections_open"] == 1)
                began = trio.current_time()
                slowest = await toggle(agent, config, venue, dsn, STEADY, TOGGLED, 50)
                print(
                    f"50 reloads in {trio.current_time() - began:.1f} s; slowest added"
                    f" symbol: {slowest:.3f} s after its reload"
                )
                venue.stall(3600)
                await wait_until(lambda: caught_up(dsn, venue, STEADY))
                # One connection for the whole run: no reload closed or reopened it.
                stats = venue.stats()
                assert stats["connections_total"] == 1, stats["disconnect_reasons"]
                assert stats["connections_open"] == 1
                assert not stats["disconnect_reasons"]
            nursery.cancel_scope.cancel()
    for symbol in STEADY:
        assert_trades_match_venue(dsn, venue, symbol)
        assert_book_updates_match_venue(dsn, venue, symbol)
    # Nothing of a removed symbol was refused as "not subscribed".
    dead = query(dsn, "SELECT reason, left(payload, 120) FROM dead_letter")
    assert dead == []


# A source over two connections: 200 streams of 37-character symbols make a
# combined-stream URL of ~9,500 characters, over the 8,000 of one connection.
LONG_STEADY = [f"L{i:02d}{'X' * 31}USDT" for i in range(96)]
LONG_TOGGLED = [f"M{i:02d}{'X' * 31}USDT" for i in range(4)]


async def test_reloads_of_a_source_on_two_connections_keep_both(fresh_db_dsn: str) -> None:
    """Added streams go to the connection with room, removed ones leave theirs; no
    connection is closed, nothing of the unchanged symbols is lost or doubled."""
    dsn = fresh_db_dsn
    venue = FakeBinance(symbols=LONG_STEADY + LONG_TOGGLED, seed=14, events_per_s=2000)
    with trio.fail_after(150):
        async with trio.open_nursery() as nursery:
            ws_url, _rest = await nursery.start(venue.serve)
            config = make_config(
                [binance_source(ws_url, LONG_STEADY, CHANNELS, name="long", backfill=False)]
            )
            async with running_agent(config, dsn) as agent:
                await wait_until(lambda: venue.stats()["connections_open"] == 2)
                await toggle(agent, config, venue, dsn, LONG_STEADY, LONG_TOGGLED, 8)
                venue.stall(3600)
                await wait_until(lambda: caught_up(dsn, venue, LONG_STEADY))
                stats = venue.stats()
                assert stats["connections_total"] == 2, stats["disconnect_reasons"]
                assert not stats["disconnect_reasons"]
            nursery.cancel_scope.cancel()
    for symbol in LONG_STEADY:
        assert_trades_match_venue(dsn, venue, symbol)
        assert_book_updates_match_venue(dsn, venue, symbol)
    assert query(dsn, "SELECT count(*) FROM dead_letter") == [(0,)]


async def test_an_unnamed_source_is_changed_live_under_its_new_key(fresh_db_dsn: str) -> None:
    """Without a ``name`` the key spells the symbols: the reload pairs the old key with
    the new one, keeps the connection and moves health and metrics to the new key."""
    dsn = fresh_db_dsn
    steady = STEADY[:6]
    venue = FakeBinance(symbols=steady + TOGGLED, seed=15, events_per_s=1500)
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            ws_url, _rest = await nursery.start(venue.serve)
            config = make_config([binance_source(ws_url, steady, CHANNELS, backfill=False)])
            async with running_agent(config, dsn) as agent:
                await wait_until(lambda: venue.stats()["connections_open"] == 1)
                await toggle(agent, config, venue, dsn, steady, TOGGLED, 5)
                # Five reloads: the last one (index 4) added TOGGLED[2].
                key = f"binance:{','.join([*steady, TOGGLED[2]])}"
                assert agent.supervisor is not None
                assert list(agent.supervisor.running) == [key]
                assert list(agent.supervisor.tasks) == [key]
                assert list(agent.health.streams) == [key]
                assert agent.health.ready
                registry = agent.metrics.registry
                assert registry.get_sample_value("mdagent_stream_connected", {"source": key}) == 1
                connected = [
                    s.labels["source"]
                    for m in registry.collect()
                    if m.name == "mdagent_stream_connected"
                    for s in m.samples
                ]
                assert connected == [key]
                venue.stall(3600)
                await wait_until(lambda: caught_up(dsn, venue, steady))
                stats = venue.stats()
                assert stats["connections_total"] == 1, stats["disconnect_reasons"]
            nursery.cancel_scope.cancel()
    for symbol in steady:
        assert_trades_match_venue(dsn, venue, symbol)
        assert_book_updates_match_venue(dsn, venue, symbol)


async def test_reload_while_the_connection_reaches_its_age_limit(fresh_db_dsn: str) -> None:
    """The connection's age limit falls while a reload's SUBSCRIBE waits for its reply.

    The replacement must carry the reloaded symbols, and the reload must stay
    live: one replacement (make-before-break), no restart of the source, the
    added symbol stored, nothing of the unchanged symbols lost or doubled.
    Before, the replacement was opened with the symbols before the reload: it
    took over and the reload, finding another connection, restarted the source.
    """
    dsn = fresh_db_dsn
    steady, added = STEADY[:4], TOGGLED[0]
    venue = FakeBinance(symbols=[*steady, added], seed=13, events_per_s=1000)
    with trio.fail_after(180):
        async with trio.open_nursery() as nursery:
            ws_url, _rest = await nursery.start(venue.serve)
            source = binance_source(
                ws_url, steady, CHANNELS, name="spot", backfill=False, max_connection_age_s=3
            )
            config = make_config([source])
            async with running_agent(config, dsn) as agent:
                await wait_until(lambda: venue.stats()["connections_open"] == 1, poll=0.01)
                opened = trio.current_time()
                supervisor = agent.supervisor
                assert supervisor is not None
                task = supervisor.tasks["spot"]
                await trio.sleep_until(opened + 2.0)
                # Confirmed at about 3.5 s of the connection's age: after its limit.
                venue.set_faults(control_reply_delay_s=1.5)
                await agent.apply_config(with_symbols(config, [*steady, added]))
                venue.set_faults(control_reply_delay_s=0.0)
                rotations = agent.metrics.stream_rotations.labels("spot", "seamless")
                await wait_until(lambda: rotations._value.get() >= 1)
                with trio.fail_after(DATA_AFTER_CHANGE_S):
                    while await stored_count(dsn, added) == 0:
                        await trio.sleep(0.05)
                # Changed live: the same task; its connections were only replaced.
                assert supervisor.tasks["spot"] is task
                assert task.connects == 1
                # Every connection the venue closed was one the agent replaced.
                stats = venue.stats()
                replaced = rotations._value.get()
                assert stats["disconnect_reasons"] == {"client closed": replaced}
                for live in stats["connections"]:
                    assert f"{added.lower()}@trade" in live["streams"]
                venue.stall(3600)
                await wait_until(lambda: caught_up(dsn, venue, steady), timeout=90)
            nursery.cancel_scope.cancel()
    for symbol in steady:
        assert_trades_match_venue(dsn, venue, symbol)
        assert_book_updates_match_venue(dsn, venue, symbol)
