"""The embedded PostgreSQL killed under a running agent is started again by the agent.

Before: the agent stayed "database not writable" until someone restarted it
(its streams ran into backpressure and recorded gaps). Now the agent starts
the server again on the same data directory and stores everything the venue
sent, once.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import trio

from mdagent.config import PipelineConfig
from mdagent.db.embedded import start_embedded
from mdagent.testing.binance.venue import FakeBinance
from tests.agent_support import binance_source, make_config, running_agent, wait_until
from tests.test_agent_binance import assert_trades_match_venue, caught_up


async def test_a_killed_embedded_server_is_started_again(tmp_path: Path) -> None:
    server = start_embedded(tmp_path / "db")
    dsn = server.get_uri()
    symbols = ["BTCUSDT", "ETHUSDT"]
    venue = FakeBinance(symbols=symbols, seed=4, events_per_s=1000)
    try:
        with trio.fail_after(300):
            async with trio.open_nursery() as nursery:
                ws_url, _rest = await nursery.start(venue.serve)
                sources = make_config([binance_source(ws_url, symbols, ["trade"])]).sources
                # Production stage limits: the outage is absorbed by backpressure.
                config = make_config(list(sources))
                config = type(config)(
                    sources=config.sources,
                    database=config.database,
                    http=config.http,
                    pipeline=PipelineConfig(),
                )
                async with running_agent(config, dsn, embedded=server) as agent:
                    await wait_until(lambda: agent.writer.rows_committed > 500)
                    old_pid = server.postmaster_pid()
                    assert old_pid is not None
                    os.kill(old_pid, signal.SIGKILL)  # as the OOM killer would
                    restarts = agent.metrics.embedded_restarts
                    await wait_until(lambda: restarts._value.get() >= 1, timeout=120)
                    new_pid = server.postmaster_pid()
                    assert new_pid is not None and new_pid != old_pid
                    rows_after = agent.writer.rows_committed
                    await wait_until(
                        lambda: agent.writer.rows_committed > rows_after + 500, timeout=120
                    )
                    await wait_until(lambda: agent.health.database_ok, timeout=60)
                    venue.stall(3600)
                    await wait_until(lambda: caught_up(dsn, venue, symbols), timeout=120)
                nursery.cancel_scope.cancel()
        for symbol in symbols:
            assert_trades_match_venue(dsn, venue, symbol)
    finally:
        server.cleanup()
