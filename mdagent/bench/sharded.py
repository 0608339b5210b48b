"""The agent phases with worker processes (``mdagent bench --workers N``).

The parent Agent runs in this process, as in the single-process phases; its
N workers are child processes (``mdagent/shards/``). What the single-process
phase reads from the writer object is read here from each worker's loopback
``/metrics``: rows committed (``mdagent_rows_committed_total``, all tables)
and the event -> commit histogram (``mdagent_commit_latency_seconds``: the
same 1-in-16 sampled trades, in buckets), whose quantiles are interpolated
within a bucket as Prometheus' ``histogram_quantile`` does. CPU is summed
over this process (the parent and the bench's own sampling) and the
workers (``/proc/<pid>/stat``). RSS is the workers' (``VmRSS``; the peak
is the sum of each worker's ``VmHWM``, an upper bound of the peak of the
sum), without this process: it holds the bench and the earlier phases.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence

import attrs
import httpx
import trio

from mdagent.bench.agent_phase import TIMELINE_STEP_S, AgentPhase
from mdagent.bench.setup import Venue
from mdagent.bench.usage import CpuSample, cpu_percent, memory_kb, proc_cpu_s
from mdagent.config import Config
from mdagent.shards.http import fetch_from_workers
from mdagent.shards.process import WorkerProcess
from mdagent.testing.kit import BenchError

# Worker processes import the agent and connect before their pipeline runs.
START_TIMEOUT_S = 60.0


@attrs.frozen
class Snapshot:
    """The workers' committed rows and latency histogram (le -> cumulative count) now."""

    rows: float
    buckets: dict[float, float]


_ROWS = "mdagent_rows_committed_total{"
_BUCKET = "mdagent_commit_latency_seconds_bucket{"
_LE = re.compile(r'le="([^"]+)"')


async def snapshot(workers: Sequence[WorkerProcess], client: httpx.AsyncClient) -> Snapshot:
    """Every worker's figures, summed; BenchError when one does not answer.

    Only the two series' lines are read (not the whole exposition parsed):
    this runs four times a second in the parent, whose CPU is counted.
    """
    rows = 0.0
    buckets: dict[float, float] = defaultdict(float)
    for answer in await fetch_from_workers(workers, "/metrics", client):
        if isinstance(answer, str):
            raise BenchError(f"a worker's /metrics: {answer}")
        for line in answer[1].splitlines():
            if line.startswith(_ROWS):
                rows += float(line.rpartition(" ")[2])
            elif line.startswith(_BUCKET) and (le := _LE.search(line)):
                buckets[float(le.group(1))] += float(line.rpartition(" ")[2])
    return Snapshot(rows, dict(buckets))


def bucket_quantile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """Quantile ``q`` (0..1) of a histogram given as (upper bound, cumulative count),
    ascending, the last bound +Inf: linear within the bucket holding it, as
    Prometheus' ``histogram_quantile``; the largest finite bound when it falls in
    +Inf; None without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(bound):
                return lower
            inside = cumulative - below
            return bound if inside <= 0 else lower + (bound - lower) * (rank - below) / inside
        lower, below = bound, cumulative
    return lower


def _usage(workers: Sequence[WorkerProcess], venue_pid: int) -> tuple[CpuSample, float, float]:
    """CPU of this process and the workers (summed into ``agent_s``); RSS of the workers
    now and their peak, summed, MB (this process's RSS holds the bench and earlier
    phases, so it is not counted: a production parent is ~60 MB, README)."""
    own = CpuSample.take(venue_pid)
    pids = [w.pid for w in workers if w.pid is not None]
    cpu = sum(proc_cpu_s(pid) or 0.0 for pid in pids)
    rss = sum(memory_kb("VmRSS", pid) or 0 for pid in pids)
    peak = sum(memory_kb("VmHWM", pid) or 0 for pid in pids)
    return attrs.evolve(own, agent_s=own.agent_s + cpu), rss / 1024, peak / 1024


async def run_sharded_phase(
    config: Config, dsn: str, venue: Venue, warmup_s: float, duration_s: float
) -> AgentPhase:
    """One agent phase with ``config.agent.workers`` worker processes (see module docstring)."""
    from mdagent.pipeline.agent import Agent

    agent = Agent(config, dsn, handle_signals=False)
    assert agent.shards is not None
    workers = agent.shards.workers
    timeline: list[tuple[float, int]] = []
    sampling = trio.CancelScope()
    client = httpx.AsyncClient()

    async def sample_timeline() -> None:
        started = trio.current_time()
        with sampling:
            while True:
                rows = (await snapshot(workers, client)).rows
                timeline.append((trio.current_time() - started, int(rows)))
                await trio.sleep(TIMELINE_STEP_S)

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            with trio.fail_after(START_TIMEOUT_S):
                for worker in workers:
                    await worker.started.wait()
            nursery.start_soon(sample_timeline)
            await trio.sleep(warmup_s)
            first = await snapshot(workers, client)
            cpu0, rss0, _ = _usage(workers, venue.proc.pid)
            await trio.sleep(duration_s)
            cpu1, rss1, peak = _usage(workers, venue.proc.pid)
            last = await snapshot(workers, client)
            sampling.cancel()
            agent.request_shutdown()
    finally:
        agent.copy_writer.close()
        with trio.CancelScope(shield=True):
            await client.aclose()
    if venue.proc.poll() is not None:
        raise BenchError(f"the fake venue exited during the run (status {venue.proc.returncode})")
    if any(w.restarts for w in workers):
        raise BenchError("a worker process died during the run (see its log lines)")
    if last.rows <= first.rows:
        raise BenchError("the agent committed nothing in the measurement window")
    buckets = sorted((le, n - first.buckets.get(le, 0.0)) for le, n in last.buckets.items())
    return AgentPhase(
        int(last.rows - first.rows),
        cpu1.wall - cpu0.wall,
        [],
        cpu_percent(cpu0, cpu1),
        (rss0, rss1),
        cpu1.agent_s - cpu0.agent_s,
        timeline,
        workers=len(workers),
        latency_buckets=buckets,
        peak_rss_mb=peak,
    )
