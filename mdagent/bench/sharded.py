"""The agent phases with worker processes (``mdagent bench --workers N``).

The phase runs in a process of its own (:func:`run_sharded_phase` starts
it, :func:`parent_main` is its code): there the parent Agent runs as it
would in production, and its N workers are its child processes
(``mdagent/shards/``). Not in the bench's process, whose memory holds the
bench, the references and the earlier single-process phases: the memory
figure would measure those.

What the single-process phase reads from the writer object is read here
from each worker's loopback ``/metrics``: rows committed
(``mdagent_rows_committed_total``, all tables) and the event -> commit
histogram (``mdagent_commit_latency_seconds``: the same 1-in-16 sampled
trades, in buckets), whose quantiles are interpolated within a bucket as
Prometheus' ``histogram_quantile`` does. CPU is summed over the phase's
process (the parent agent and the bench's sampling) and the workers
(``/proc/<pid>/stat``).

Memory, over the parent, the zygote the workers are forked from
(``shards/zygote.py``, as ``mdagent run`` starts it) and the workers
(:class:`MemorySampler`):

- **peak of the summed PSS** (``Pss`` of ``/proc/<pid>/smaps_rollup``,
  sampled every ``MEMORY_STEP_S`` from the start of the agent to the end
  of the measured window): what the recorder costs the machine. PSS divides each shared page
  (the interpreter, the C extensions' code, file pages) between the
  processes mapping it, so a sum counts every page once. This is the
  figure compared with the memory target.
- **summed peak RSS** (each process's ``VmHWM``): an upper bound of the
  peak of the sum, which counts every shared page once per process.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sys
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import attrs
import httpx
import trio

from mdagent.bench.agent_phase import TIMELINE_STEP_S, AgentPhase
from mdagent.bench.setup import Venue
from mdagent.bench.usage import CpuSample, cpu_percent, memory_kb, proc_cpu_s, pss_kb
from mdagent.config import CONVERTER, Config
from mdagent.shards.http import fetch_from_workers
from mdagent.shards.process import WorkerProcess, mdagent_command
from mdagent.shards.zygote import Zygote
from mdagent.testing.kit import BenchError

# Worker processes import the agent and connect before their pipeline runs.
START_TIMEOUT_S = 60.0
# How often the processes' PSS is read: each read walks the process's page
# tables (~0.1-0.5 ms of kernel CPU in the reading process, counted as agent CPU).
MEMORY_STEP_S = 0.5


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


def _pids(workers: Sequence[WorkerProcess], zygote: Zygote | None) -> list[int]:
    """This process (the parent agent), the zygote if any, and the running workers."""
    parent = [os.getpid()] if zygote is None else [os.getpid(), zygote.pid]
    return [*parent, *(w.pid for w in workers if w.pid is not None)]


def summed_pss_mb(pids: Sequence[int]) -> float:
    """The processes' PSS summed, MB (a process gone counts 0)."""
    return sum(pss_kb(pid) or 0 for pid in pids) / 1024


class MemorySampler:
    """The peak of the summed PSS of the parent, the zygote and the workers, read every
    ``MEMORY_STEP_S`` while :meth:`run` runs, and the summed peak RSS."""

    def __init__(self, workers: Sequence[WorkerProcess], zygote: Zygote | None) -> None:
        self._workers = workers
        self._zygote = zygote
        self.peak_pss_mb = 0.0
        self.samples = 0

    def sample(self) -> float:
        """The summed PSS now, MB (the peak updated)."""
        now = summed_pss_mb(_pids(self._workers, self._zygote))
        self.peak_pss_mb = max(self.peak_pss_mb, now)
        self.samples += 1
        return now

    def summed_peak_rss_mb(self) -> float:
        """Each process's peak RSS (``VmHWM``) summed, MB: an upper bound."""
        pids = _pids(self._workers, self._zygote)
        return sum(memory_kb("VmHWM", pid) or 0 for pid in pids) / 1024

    async def run(self) -> None:
        while True:
            self.sample()
            await trio.sleep(MEMORY_STEP_S)


def _usage(workers: Sequence[WorkerProcess], zygote: Zygote | None, venue_pid: int) -> CpuSample:
    """CPU of this process, the zygote and the workers (summed into ``agent_s``)."""
    own = CpuSample.take(venue_pid)
    cpu = sum(proc_cpu_s(pid) or 0.0 for pid in _pids(workers, zygote)[1:])
    return attrs.evolve(own, agent_s=own.agent_s + cpu)


async def run_sharded_phase(
    config: Config, dsn: str, venue: Venue, warmup_s: float, duration_s: float
) -> AgentPhase:
    """One agent phase with ``config.agent.workers`` worker processes, measured in a
    process of its own (see module docstring); BenchError when it fails."""
    hello = {
        "config": CONVERTER.unstructure(config),
        "dsn": dsn,
        "venue_pid": venue.proc.pid,
        "warmup_s": warmup_s,
        "duration_s": duration_s,
    }
    # Its stderr is this one's (the agent's log lines); the result comes on stdout.
    done = await trio.run_process(
        mdagent_command("mdagent.bench.sharded", "parent_main"),
        stdin=json.dumps(hello).encode(),
        capture_stdout=True,
        check=False,
    )
    if venue.proc.poll() is not None:
        raise BenchError(f"the fake venue exited during the run (status {venue.proc.returncode})")
    lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise BenchError(
            f"the sharded phase's process failed (exit status {done.returncode}; see above)"
        ) from None
    if "error" in result:
        raise BenchError(result["error"])
    return phase_from_json(result)


def phase_to_json(phase: AgentPhase) -> dict[str, Any]:
    """``phase`` as JSON values (tuples become lists)."""
    return attrs.asdict(phase)


def phase_from_json(data: dict[str, Any]) -> AgentPhase:
    """The AgentPhase :func:`phase_to_json` gave."""
    return AgentPhase(
        **{
            **data,
            "rss_mb": tuple(data["rss_mb"]),
            "timeline": [tuple(x) for x in data["timeline"]],
            "latency_buckets": [tuple(x) for x in data["latency_buckets"]],
        }
    )


def parent_main() -> int:
    """The phase's process: the hello (JSON) on stdin, the AgentPhase (JSON) on stdout."""
    from mdagent.logs import configure_logging

    # A SIGTERM (the bench stopping it) unwinds like Ctrl-C: the workers are stopped.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: signal.raise_signal(signal.SIGINT))
    from mdagent.pipeline.agent import start_zygote

    hello = json.loads(sys.stdin.readline())
    config = CONVERTER.structure(hello["config"], Config)
    configure_logging(config.agent.log_level, config.agent.log_format)
    zygote = start_zygote(config)  # as mdagent run does
    try:
        phase = trio.run(
            measure_sharded_phase,
            config,
            hello["dsn"],
            hello["venue_pid"],
            hello["warmup_s"],
            hello["duration_s"],
            zygote,
        )
    except BenchError as exc:
        result: dict[str, Any] = {"error": str(exc)}
    else:
        result = phase_to_json(phase)
    finally:
        if zygote is not None:
            zygote.close()
    print(json.dumps(result), flush=True)
    return 0 if "error" not in result else 1


async def measure_sharded_phase(
    config: Config,
    dsn: str,
    venue_pid: int,
    warmup_s: float,
    duration_s: float,
    zygote: Zygote | None = None,
) -> AgentPhase:
    """The phase, in the process :func:`parent_main` runs (see module docstring)."""
    from mdagent.pipeline.agent import Agent

    agent = Agent(config, dsn, handle_signals=False, zygote=zygote)
    assert agent.shards is not None
    workers = agent.shards.workers
    memory = MemorySampler(workers, zygote)
    timeline: list[tuple[float, int]] = []
    sampling, memory_sampling = trio.CancelScope(), trio.CancelScope()
    client = httpx.AsyncClient()

    async def sample_timeline() -> None:
        started = trio.current_time()
        with sampling:
            while True:
                rows = (await snapshot(workers, client)).rows
                timeline.append((trio.current_time() - started, int(rows)))
                await trio.sleep(TIMELINE_STEP_S)

    async def sample_memory() -> None:
        with memory_sampling:
            await memory.run()

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            nursery.start_soon(sample_memory)
            with trio.fail_after(START_TIMEOUT_S):
                for worker in workers:
                    await worker.started.wait()
            nursery.start_soon(sample_timeline)
            await trio.sleep(warmup_s)
            first = await snapshot(workers, client)
            cpu0, pss0 = _usage(workers, zygote, venue_pid), memory.sample()
            await trio.sleep(duration_s)
            cpu1, pss1 = _usage(workers, zygote, venue_pid), memory.sample()
            memory_sampling.cancel()
            # While the workers run, after the last PSS sample: at least that peak.
            peak_rss = memory.summed_peak_rss_mb()
            last = await snapshot(workers, client)
            sampling.cancel()
            agent.request_shutdown()
    finally:
        agent.copy_writer.close()
        with trio.CancelScope(shield=True):
            await client.aclose()
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
        (pss0, pss1),
        cpu1.agent_s - cpu0.agent_s,
        timeline,
        workers=len(workers),
        latency_buckets=buckets,
        peak_rss_mb=peak_rss,
        peak_pss_mb=memory.peak_pss_mb,
    )
