"""A database write that hangs (a lock held elsewhere) makes the agent not ready.

Before, readiness stayed true for as long as the write hung: nothing had
failed, so nothing said otherwise. The lock here is an ACCESS EXCLUSIVE lock
on ``stream_offsets``, held by another session, which every stream batch
waits for. Once it is released the batch commits and nothing is lost.
"""

from __future__ import annotations

import psycopg
import pytest
import trio

from mdagent.pipeline import agent as agent_module
from mdagent.testing.binance.venue import FakeBinance
from tests.agent_support import binance_source, make_config, running_agent, wait_until
from tests.test_agent_binance import assert_trades_match_venue, caught_up


async def test_a_hung_write_makes_the_agent_not_ready_until_it_ends(
    fresh_db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_module, "DATABASE_PROBE_EVERY_S", 0.2)
    monkeypatch.setattr(agent_module, "WRITE_STUCK_AFTER_S", 1.0)
    symbols = ["BTCUSDT", "ETHUSDT"]
    venue = FakeBinance(symbols=symbols, seed=4, events_per_s=500)
    blocker = psycopg.connect(fresh_db_dsn)
    try:
        with trio.fail_after(180):
            async with trio.open_nursery() as nursery:
                ws_url, _rest = await nursery.start(venue.serve)
                config = make_config([binance_source(ws_url, symbols, ["trade"])])
                async with running_agent(config, fresh_db_dsn) as agent:
                    await wait_until(lambda: agent.writer.rows_committed > 100, timeout=60)
                    await wait_until(lambda: agent.health.ready, timeout=60)
                    await trio.to_thread.run_sync(
                        blocker.execute, "LOCK TABLE stream_offsets IN ACCESS EXCLUSIVE MODE"
                    )
                    try:
                        await wait_until(
                            lambda: any(
                                p.startswith("a database write has run for")
                                for p in agent.health.problems()
                            ),
                            timeout=60,
                        )
                        assert not agent.health.ready
                    finally:
                        # The lock goes (also when the check failed: the agent
                        # could not stop while its write waits for it).
                        await trio.to_thread.run_sync(blocker.rollback)
                    await wait_until(lambda: agent.health.ready, timeout=60)
                    venue.stall(3600)
                    await wait_until(lambda: caught_up(fresh_db_dsn, venue, symbols), timeout=60)
                nursery.cancel_scope.cancel()
    finally:
        blocker.close()
    for symbol in symbols:
        assert_trades_match_venue(fresh_db_dsn, venue, symbol)
