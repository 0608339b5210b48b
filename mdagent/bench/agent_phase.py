"""The agent phases: the real Agent in this process against a fake venue."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import trio

from mdagent.bench.settings import Settings
from mdagent.bench.setup import Venue
from mdagent.bench.usage import CpuSample, cpu_percent, memory_kb
from mdagent.config import Config, DatabaseConfig, HttpConfig, PipelineConfig
from mdagent.testing.kit import BenchError


def agent_config(settings: Settings, venue: Venue) -> Config:
    names = settings.symbol_names()
    n = settings.connections()
    groups = [names[i::n] for i in range(n)]
    sources = []
    for i, group in enumerate(groups):
        sources.append(
            settings.profile.source(i, group, venue.ws_url, venue.rest_url, venue.api_keys[i])
        )
    # Production defaults everywhere except HTTP (no fixed port in a bench).
    return Config(
        sources=tuple(sources),
        database=DatabaseConfig(),
        http=HttpConfig(enabled=False),
        pipeline=PipelineConfig(),
    )


@attrs.define
class AgentPhase:
    rows: int
    seconds: float
    latencies_s: list[float]
    cpu: dict[str, float | None]
    rss_mb: tuple[float, float]  # at the start and the end of the window

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


async def run_agent_phase(
    config: Config, dsn: str, venue: Venue, warmup_s: float, duration_s: float
) -> AgentPhase:
    from mdagent.pipeline.agent import Agent

    agent = Agent(config, dsn, handle_signals=False)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            await trio.sleep(warmup_s)
            rows0 = agent.writer.rows_committed
            agent.writer.latencies_s.clear()  # only this window's samples
            cpu0 = CpuSample.take(venue.proc.pid)
            rss0 = (memory_kb("VmRSS") or 0) / 1024
            await trio.sleep(duration_s)
            cpu1 = CpuSample.take(venue.proc.pid)
            rss1 = (memory_kb("VmRSS") or 0) / 1024
            rows1 = agent.writer.rows_committed
            latencies = list(agent.writer.latencies_s)
            agent.request_shutdown()
    finally:
        agent.copy_writer.close()
    if venue.proc.poll() is not None:
        raise BenchError(f"the fake venue exited during the run (status {venue.proc.returncode})")
    if rows1 <= rows0:
        raise BenchError("the agent committed nothing in the measurement window")
    return AgentPhase(
        rows1 - rows0, cpu1.wall - cpu0.wall, latencies, cpu_percent(cpu0, cpu1), (rss0, rss1)
    )


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values (q in 0..100)."""
    if not sorted_values:
        raise BenchError("no latency samples were taken")
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[min(len(sorted_values), int(rank)) - 1]
