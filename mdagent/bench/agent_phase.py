"""The agent phases: the real Agent in this process against a fake venue."""

from __future__ import annotations

import os
from collections.abc import Sequence

import attrs
import trio

from mdagent.bench.settings import Settings
from mdagent.bench.setup import Venue
from mdagent.bench.usage import CpuSample, cpu_percent, memory_kb
from mdagent.config import (
    AgentConfig,
    Config,
    DatabaseConfig,
    HttpConfig,
    PipelineConfig,
    SourceConfig,
)
from mdagent.providers.registry import provider_for
from mdagent.shards.assign import shard_of_source
from mdagent.testing.kit import BenchError


def agent_config(settings: Settings, venue: Venue, workers: int = 1) -> Config:
    """The bench's config: the profile's sources over the venue, ``workers`` processes."""
    sources = []
    for i, group in enumerate(settings.source_groups(workers)):
        source = settings.profile.source(i, group, venue.ws_url, venue.rest_url, venue.api_keys[i])
        sources.append(spread_over_workers(source, i, workers))
    # Production defaults everywhere except HTTP (no fixed port in a bench).
    return Config(
        sources=tuple(sources),
        # Worker processes configure their own logging: as quiet as the bench's.
        agent=AgentConfig(workers=workers, log_level="warning", log_format="console"),
        database=DatabaseConfig(),
        http=HttpConfig(enabled=False),
        pipeline=PipelineConfig(),
    )


def spread_over_workers(source: SourceConfig, index: int, workers: int) -> SourceConfig:
    """``source`` placed on worker ``index % workers`` when it stays whole on one worker.

    A single-connection provider's source is owned by the worker its key
    variable's name hashes to (shards/assign.py): the bench names a copy of
    the variable (suffix ``_<j>``, the first that lands right) so that its
    sources spread evenly. Split sources are returned as they are.
    """
    if workers == 1 or not provider_for(source.provider).single_connection:
        return source
    env = source.api_key_env or ""
    for j in range(10_000):
        moved = attrs.evolve(source, api_key_env=f"{env}_{j}")
        if shard_of_source(moved, workers) == index % workers:
            os.environ[f"{env}_{j}"] = os.environ.get(env, "")
            return moved
    raise BenchError(f"no key variable name lands on worker {index % workers}")


# How often the max-rate phase samples the committed count (the timeline).
TIMELINE_STEP_S = 0.25


@attrs.define
class AgentPhase:
    """One agent phase's window: ``rows`` committed in ``seconds``.

    ``agent_cpu_s``: CPU seconds (user + system) of this whole process, every
    thread (the agent's trio thread and its COPY worker threads) over the
    window; the venue and PostgreSQL are other processes. ``timeline``:
    (seconds since the agent started, rows committed so far), one sample per
    ``TIMELINE_STEP_S`` from the start (warm-up included).
    """

    rows: int
    seconds: float
    latencies_s: list[float]
    cpu: dict[str, float | None]
    rss_mb: tuple[float, float]  # at the start and the end of the window
    agent_cpu_s: float
    timeline: list[tuple[float, int]]
    # With worker processes (bench/sharded.py): how many; the event -> commit
    # histogram's window (upper bound s, cumulative count) instead of samples;
    # the processes' (parent, zygote, workers) peak RSS summed, an upper bound, and
    # the peak of their summed PSS (MB); ``rss_mb`` is then their summed PSS.
    workers: int = 1
    latency_buckets: list[tuple[float, float]] = attrs.field(factory=list)
    peak_rss_mb: float | None = None
    peak_pss_mb: float | None = None

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_row(self) -> float:
        """Agent CPU per committed row (= event), microseconds."""
        return 1e6 * self.agent_cpu_s / self.rows if self.rows else 0.0

    def rate_to(self, rows: int) -> float | None:
        """Committed rows/s from the last sample before the first commit until the
        first sample with ``rows`` committed (None: the phase did not commit that many)."""
        first = next((t for t, n in reversed(self.timeline) if n == 0), None)
        reached = next((t for t, n in self.timeline if n >= rows), None)
        if first is None or reached is None or reached <= first:
            return None
        return rows / (reached - first)


async def run_agent_phase(
    config: Config, dsn: str, venue: Venue, warmup_s: float, duration_s: float
) -> AgentPhase:
    from mdagent.pipeline.agent import Agent

    agent = Agent(config, dsn, handle_signals=False)
    timeline: list[tuple[float, int]] = []
    sampling = trio.CancelScope()

    async def sample_timeline() -> None:
        started = trio.current_time()
        with sampling:
            while True:
                timeline.append((trio.current_time() - started, agent.writer.rows_committed))
                await trio.sleep(TIMELINE_STEP_S)

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            nursery.start_soon(sample_timeline)
            await trio.sleep(warmup_s)
            rows0 = agent.writer.rows_committed
            del agent.writer.latencies_s[:]  # only this window's samples
            cpu0 = CpuSample.take(venue.proc.pid)
            rss0 = (memory_kb("VmRSS") or 0) / 1024
            await trio.sleep(duration_s)
            cpu1 = CpuSample.take(venue.proc.pid)
            rss1 = (memory_kb("VmRSS") or 0) / 1024
            rows1 = agent.writer.rows_committed
            latencies = list(agent.writer.latencies_s)
            sampling.cancel()
            agent.request_shutdown()
    finally:
        agent.copy_writer.close()
    if venue.proc.poll() is not None:
        raise BenchError(f"the fake venue exited during the run (status {venue.proc.returncode})")
    if rows1 <= rows0:
        raise BenchError("the agent committed nothing in the measurement window")
    return AgentPhase(
        rows1 - rows0,
        cpu1.wall - cpu0.wall,
        latencies,
        cpu_percent(cpu0, cpu1),
        (rss0, rss1),
        cpu1.agent_s - cpu0.agent_s,
        timeline,
    )


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values (q in 0..100)."""
    if not sorted_values:
        raise BenchError("no latency samples were taken")
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[min(len(sorted_values), int(rank)) - 1]
