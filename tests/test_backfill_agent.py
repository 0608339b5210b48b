"""Automatic gap repair inside the agent, end to end: fake venue (WebSocket + REST
over real sockets), the real agent, a real PostgreSQL."""

from __future__ import annotations

from decimal import Decimal

import trio

from mdagent.backfill.worker import WorkerSettings
from mdagent.testing.fake_binance import FakeBinance
from tests.agent_support import binance_source, make_config, query, running_agent, wait_until

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
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            ws_url, rest_url = await nursery.start(venue.serve)
            source = binance_source(ws_url, ["BTCUSDT"], ["trade", "aggTrade"], rest_url=rest_url)
            async with running_agent(make_config([source]), dsn, backfill=FAST):
                await wait_until(lambda: len(venue.truth.trade_ids("BTCUSDT")) > 2000)
                venue.set_faults(disconnect_every_frames=400)
                await wait_until(lambda: venue.connections_total >= 3)
                venue.set_faults(disconnect_every_frames=None)
                await wait_until(lambda: len(venue.truth.trade_ids("BTCUSDT")) > 6000)
                venue.stall(3600)
                last = venue.truth.trade_ids("BTCUSDT")[-1]

                def complete() -> bool:
                    ids = trade_ids(dsn, "BTCUSDT")
                    states = job_states(dsn, "trade") + job_states(dsn, "aggTrade")
                    return bool(ids) and ids[-1] == last and all(s == "done" for s in states)

                await wait_until(complete, timeout=60)
            nursery.cancel_scope.cancel()

    ids = trade_ids(dsn, "BTCUSDT")
    assert ids == list(range(ids[0], last + 1))  # every id, once
    assert venue.truth.skipped_trade_ids("BTCUSDT") == list(range(base + 1000, base + 1500))
    assert ids[0] <= base + 1000
    market = venue.market("BTCUSDT")
    stored = query(
        dsn,
        "SELECT trade_id::bigint, price::text, size::text FROM trades"
        " WHERE symbol = 'BTCUSDT' AND channel = 'trade' ORDER BY 1",
    )
    for trade_id, price, size in stored:
        truth = market.trade(trade_id)
        assert truth is not None and (price, size) == (truth.p, truth.q), trade_id
    assert Decimal(stored[0][1]) > 0
    jobs = query(
        dsn, "SELECT channel, status, from_seq, to_seq FROM fetch_jobs WHERE channel = 'trade'"
    )
    assert ("trade", "done", base + 1000, base + 1499) in jobs
    assert all(j[1] == "done" for j in jobs)
    assert venue.connections_total >= 3  # two disconnects (their holes, if any, are jobs too)
    agg_ids = trade_ids(dsn, "BTCUSDT", "aggTrade")
    assert agg_ids == list(range(agg_ids[0], agg_ids[-1] + 1))
