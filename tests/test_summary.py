"""The agent's summary line: rows per table and rate, commit p99, open gaps, dead letters."""

from __future__ import annotations

import math
import tracemalloc
from array import array
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import attrs
import trio
from structlog.testing import capture_logs

from mdagent.config import AgentConfig
from mdagent.logs import configure_logging
from mdagent.pipeline.summary import p99
from mdagent.pipeline.writer import LATENCIES_KEPT
from mdagent.testing.binance.venue import FakeBinance
from tests.agent_support import binance_source, make_config, query, running_agent, wait_until


@contextmanager
def info_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Captured log events, info level included (conftest filters info out)."""
    configure_logging("info", "console")
    try:
        with capture_logs() as logs:
            yield logs
    finally:
        configure_logging("warning", "console")


def test_p99_nearest_rank() -> None:
    assert p99([]) is None
    assert p99([0.5]) == 0.5
    assert p99([float(i) for i in range(1, 201)]) == 198.0
    assert p99(array("d", [3.0, 1.0, 2.0])) == 3.0


def test_p99_of_the_full_latency_sample_does_not_copy_it() -> None:
    """The writer keeps up to LATENCIES_KEPT latencies as doubles (8 bytes each); a
    sorted copy as float objects took 32 bytes each (3.2 MB) every summary line,
    which raised the agent's RSS high-water mark at the first one."""
    values = array("d", (float((i * 7_919) % LATENCIES_KEPT) for i in range(LATENCIES_KEPT)))
    tracemalloc.start()
    try:
        result = p99(values)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result == float(math.ceil(0.99 * LATENCIES_KEPT) - 1)
    assert peak < LATENCIES_KEPT * 8 // 4  # a quarter of the array itself


async def test_summary_lines(fresh_db_dsn: str) -> None:
    venue = FakeBinance(symbols=["BTCUSDT"], seed=11, events_per_s=400)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            ws_url, _ = await nursery.start(venue.serve)
            config = make_config([binance_source(ws_url, ["BTCUSDT"], ["trade", "bookTicker"])])
            config = attrs.evolve(config, agent=AgentConfig(summary_interval_s=0.5))
            with info_logs() as logs:
                async with running_agent(config, fresh_db_dsn):
                    # Every line the venue sends after this one is a dead letter.
                    await wait_until(
                        lambda: sum(1 for e in logs if e["event"] == "agent.summary") >= 1
                    )
                    venue.set_faults(malformed_every_frames=10)
                    await wait_until(
                        lambda: any(
                            e["event"] == "agent.summary" and e["dead_letters"] > 0 for e in logs
                        )
                    )
            nursery.cancel_scope.cancel()
    lines = [e for e in logs if e["event"] == "agent.summary"]
    busy = [e for e in lines if e["rows"].get("trades")]
    assert busy, lines
    line = busy[-1]
    assert line["rows_per_s"]["trades"] > 0
    assert line["rows"]["quotes"] > 0
    assert 0 < line["commit_latency_p99_s"] < 5
    assert line["interval_s"] >= 0.5
    pending = query(fresh_db_dsn, "SELECT count(*) FROM fetch_jobs WHERE status = 'pending'")
    assert isinstance(line["open_gaps"], int) and line["open_gaps"] <= pending[0][0]
    assert sum(e["dead_letters"] for e in lines) > 0
