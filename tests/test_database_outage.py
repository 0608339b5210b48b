"""The database stops for 20 s mid-stream, then comes back.

A private embedded server (not the shared test server) is stopped with
``pg_ctl stop -m immediate`` (as a crash would) and started again. The agent
must never exit, must report not-ready meanwhile, must keep memory bounded
(backpressure instead of a growing queue) and, once the database is back,
store everything the venue sent exactly once.
"""

from __future__ import annotations

import resource
from pathlib import Path

import trio

from mdagent.config import AgentConfig, PipelineConfig
from mdagent.db.embedded import EmbeddedServer, start_embedded
from mdagent.testing.binance.venue import FakeBinance
from tests.agent_support import binance_source, make_config, query, running_agent, wait_until
from tests.test_agent_binance import assert_trades_match_venue, caught_up

OUTAGE_S = 20.0


def stop_server(server: EmbeddedServer) -> None:
    server.stop("immediate")  # as a crash would


def start_server(server: EmbeddedServer) -> None:
    server.start()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def test_database_outage_loses_nothing(tmp_path: Path) -> None:
    server = start_embedded(tmp_path / "outage-db")
    dsn = server.get_uri()
    symbols = ["BTCUSDT", "ETHUSDT", "BNBUSDT"]
    venue = FakeBinance(symbols=symbols, seed=9, events_per_s=3000)
    try:
        with trio.fail_after(300):
            async with trio.open_nursery() as nursery:
                ws_url, _rest = await nursery.start(venue.serve)
                config = make_config(
                    [
                        binance_source(
                            ws_url, symbols, ["trade", "aggTrade", "bookTicker", "kline_1s"]
                        )
                    ]
                )
                # Production defaults for the stages: a 20 s outage is absorbed
                # by blocking (TCP backpressure), below the 60 s stop limit.
                config = make_config(list(config.sources))
                config = type(config)(
                    sources=config.sources,
                    database=config.database,
                    http=config.http,
                    pipeline=PipelineConfig(),
                )
                async with running_agent(config, dsn) as agent:
                    await wait_until(lambda: agent.writer.rows_committed > 5000)
                    rss_before = peak_rss_mb()
                    await trio.to_thread.run_sync(stop_server, server)
                    await wait_until(lambda: not agent.health.database_ok, timeout=60)
                    assert not agent.health.ready
                    await trio.sleep(OUTAGE_S)
                    rows_during = agent.writer.rows_committed
                    await trio.to_thread.run_sync(start_server, server)
                    await wait_until(lambda: agent.health.database_ok, timeout=30)
                    await wait_until(lambda: agent.writer.rows_committed > rows_during + 5000)
                    venue.stall(3600)
                    await wait_until(lambda: caught_up(dsn, venue, symbols))
                    errors = agent.metrics.write_errors.labels("database_unavailable")._value.get()
                    rss_growth = peak_rss_mb() - rss_before
                nursery.cancel_scope.cancel()
        assert errors >= 1
        # Bounded: the frames and records channels are bounded and the writer
        # holds one batch; 20 s of a 3-symbol stream must not pile up in memory.
        assert rss_growth < 100, f"peak RSS grew by {rss_growth:.0f} MB during the outage"
        for symbol in symbols:
            assert_trades_match_venue(dsn, venue, symbol)
    finally:
        server.cleanup()


async def test_shutdown_with_database_down_leaves_recorded_gaps(tmp_path: Path) -> None:
    """Unwritten at the shutdown deadline: exit 1, and the next start records the hole."""
    server = start_embedded(tmp_path / "outage-db2")
    dsn = server.get_uri()
    symbols = ["BTCUSDT"]
    venue = FakeBinance(symbols=symbols, seed=4, events_per_s=2000)
    try:
        with trio.fail_after(180):
            async with trio.open_nursery() as nursery:
                ws_url, _rest = await nursery.start(venue.serve)
                config = make_config([binance_source(ws_url, symbols, ["trade"])])
                config = type(config)(
                    sources=config.sources,
                    database=config.database,
                    http=config.http,
                    pipeline=config.pipeline,
                    agent=AgentConfig(shutdown_grace_s=2.0),
                )
                async with running_agent(config, dsn) as first:
                    await wait_until(lambda: first.writer.rows_committed > 1000)
                    await trio.to_thread.run_sync(stop_server, server)
                    await wait_until(lambda: not first.health.database_ok, timeout=60)
                    await trio.sleep(1)  # frames keep arriving and pile up (bounded)
                assert first.exit_code == 1

                await trio.to_thread.run_sync(start_server, server)
                async with running_agent(config, dsn) as second:
                    await wait_until(lambda: second.writer.rows_committed > 1000)
                    venue.stall(3600)
                    await wait_until(lambda: caught_up(dsn, venue, symbols))
                nursery.cancel_scope.cancel()
        sent = set(venue.truth.trade_ids("BTCUSDT"))
        stored = {int(r[0]) for r in query(dsn, "SELECT trade_id FROM trades")}
        assert stored <= sent
        lost = sent - stored
        assert lost, "the first agent should have had unwritten trades at its deadline"
        gaps = query(dsn, "SELECT from_seq, to_seq FROM fetch_jobs WHERE channel = 'trade'")
        covered = {i for lo, hi in gaps for i in range(lo, hi + 1)}
        assert lost <= covered
    finally:
        server.cleanup()


async def test_readiness_follows_the_database_while_idle(tmp_path: Path) -> None:
    """No data flowing: a stopped database must still turn readiness false (and back)."""
    server = start_embedded(tmp_path / "idle-db")
    dsn = server.get_uri()
    try:
        with trio.fail_after(180):
            # Nothing listens on this port: the stream never delivers data.
            config = make_config([binance_source("ws://127.0.0.1:9", ["BTCUSDT"], ["trade"])])
            async with running_agent(config, dsn) as agent:
                assert agent.health.database_ok
                assert agent.metrics.db_up._value.get() == 1
                await trio.to_thread.run_sync(stop_server, server)
                await wait_until(lambda: not agent.health.database_ok, timeout=60)
                assert agent.metrics.db_up._value.get() == 0
                await trio.to_thread.run_sync(start_server, server)
                await wait_until(lambda: agent.health.database_ok, timeout=60)
    finally:
        server.cleanup()
