"""Start-up catch-up: the agent is killed with SIGKILL mid-stream and started again.

The agent runs as its own process (the console script, as systemd runs it);
the fake Binance runs here, and a reader of ours keeps its market trading
while the agent is dead, as the real market would.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import trio
import trio_websocket

from mdagent.testing.binance.venue import FakeBinance
from tests.agent_support import assert_trades_are_the_markets, query, wait_until


def write_config(path: Path, dsn: str, ws_url: str, rest_url: str) -> None:
    path.write_text(
        f'[agent]\nlog_format = "json"\n[database]\ndsn = "{dsn}"\nbatch_max_delay_s = 0.05\n'
        "[http]\nenabled = false\n"
        '[[sources]]\nprovider = "binance"\nsymbols = ["BTCUSDT"]\n'
        f'channels = ["trade", "aggTrade"]\nws_url = "{ws_url}"\nrest_url = "{rest_url}"\n'
        "reconnect_initial_s = 0.05\n"
    )


def ids(dsn: str, channel: str) -> list[int]:
    rows = query(
        dsn,
        "SELECT trade_id::bigint FROM trades WHERE symbol = 'BTCUSDT' AND channel = %s ORDER BY 1",
        channel,
    )
    return [r[0] for r in rows]


async def keep_trading(
    url: str, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    async with trio_websocket.open_websocket_url(url) as ws:
        task_status.started()
        while True:
            await ws.get_message()


async def test_kill_9_mid_stream_then_restart_is_complete_without_duplicates(
    fresh_db_dsn: str, tmp_path: Path
) -> None:
    """Done-when 2: after kill -9 and a restart, each stream backfills from its last
    committed offset to its first live event: every id once, nothing missing."""
    dsn = fresh_db_dsn
    venue = FakeBinance(symbols=["BTCUSDT"], seed=31, events_per_s=800)
    cfg = tmp_path / "config.toml"
    cmd = [sys.executable, "-m", "mdagent", "--config", str(cfg)]
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            ws_url, rest_url = await nursery.start(venue.serve)
            write_config(cfg, dsn, ws_url, rest_url)
            log = (tmp_path / "agent.log").open("w")
            agent = await trio.lowlevel.open_process(cmd, stdout=subprocess.DEVNULL, stderr=log)
            try:
                await wait_until(lambda: len(ids(dsn, "trade")) > 1500, timeout=30)
                reader = trio.CancelScope()

                async def trade_while_away() -> None:
                    with reader:
                        await keep_trading(f"{ws_url}/ws/btcusdt@trade")

                nursery.start_soon(trade_while_away)
                agent.send_signal(signal.SIGKILL)
                await agent.wait()
                before = venue.market("BTCUSDT").next_trade_id
                await wait_until(
                    lambda: venue.market("BTCUSDT").next_trade_id > before + 1000, timeout=60
                )
                agent = await trio.lowlevel.open_process(cmd, stdout=subprocess.DEVNULL, stderr=log)
                await wait_until(lambda: ids(dsn, "trade")[-1] > before + 1500, timeout=30)
                reader.cancel()
                venue.stall(3600)

                def complete() -> bool:
                    # Caught up and repaired: no hole between the first and the last
                    # stored id of either channel, and every gap job done.
                    for channel in ("trade", "aggTrade"):
                        stored = ids(dsn, channel)
                        if stored != list(range(stored[0], stored[-1] + 1)):
                            return False
                    states = query(dsn, "SELECT DISTINCT status FROM fetch_jobs")
                    return states == [("done",)]

                await wait_until(complete, timeout=60)
                agent.send_signal(signal.SIGTERM)
                assert await agent.wait() == 0
            finally:
                if agent.returncode is None:
                    agent.kill()
                log.close()
            nursery.cancel_scope.cancel()

    trades = ids(dsn, "trade")
    assert trades == list(range(trades[0], trades[-1] + 1))  # every id, once
    assert trades[-1] > before + 1500  # ...including what was traded while it was dead
    aggs = ids(dsn, "aggTrade")
    assert aggs == list(range(aggs[0], aggs[-1] + 1))
    assert_trades_are_the_markets(dsn, venue.market("BTCUSDT"))
    gaps = query(dsn, "SELECT channel, reason, from_seq, to_seq FROM fetch_jobs ORDER BY id")
    # The hole of the restart (what the dead agent had not committed and what
    # the market traded meanwhile) was a gap, and it is filled.
    assert any(ch == "trade" and hi - lo >= 1000 for ch, _r, lo, hi in gaps), gaps
