"""`mdagent bench --soak S`: the agent held at the provider's paced target for S seconds.

The question a soak answers is whether memory stays flat while the agent
runs for minutes, not only over the bench's 20 s window (issue 14: "peak RSS
... flat over a 5-minute soak"). The agent runs against the fake venue paced
at the provider's target rate (``--latency-rate`` overrides it); this
process's RSS (the agent: the venue and PostgreSQL are other processes) is
read every ``RSS_STEP_S`` from the end of the warm-up on.

Figures (:func:`soak_figures`): the mean RSS of the first and of the last
window (one minute, or a third of the run when it is shorter than three
minutes), their difference, and the least-squares slope over every sample in
MB per minute. **Flat** means the last window's mean is at most
``FLAT_TOLERANCE_MB`` above the first window's: a leak of records, frames or
buffers that scales with the data (a few hundred bytes per event, millions
of events) shows as tens of MB; allocator noise and caches that fill to
their bound (the dedup window, the encoding caches, the partition cache)
stay within a few.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import trio

from mdagent.bench.agent_phase import agent_config, percentile
from mdagent.bench.settings import Settings
from mdagent.bench.setup import Venue, database_server, fake_venue, fresh_database
from mdagent.bench.usage import CpuSample, cpu_percent, memory_kb, peak_rss_mb
from mdagent.config import Config
from mdagent.testing.kit import BenchError

# How often RSS is read (seconds).
RSS_STEP_S = 5.0
# The first and last windows compared (seconds); a third of the run if shorter.
WINDOW_S = 60.0
# "Flat": the last window's mean RSS at most this far above the first's (MB).
FLAT_TOLERANCE_MB = 10.0
# Below this share of the paced rate the agent fell behind: its bounded
# channels and batches fill with the backlog, which RSS then includes.
KEPT_UP_RATIO = 0.99


@attrs.frozen
class SoakFigures:
    """RSS over a soak: window means (MB), their difference, the slope (MB/min)."""

    samples: int
    window_s: float
    first_mb: float
    last_mb: float
    growth_mb: float
    slope_mb_per_min: float
    max_mb: float
    flat: bool


def soak_figures(rss: Sequence[tuple[float, float]]) -> SoakFigures:
    """The figures of RSS samples ``(seconds since the soak began, MB)``, in time order.

    The first window is the samples with ``t <= start + window``, the last
    those with ``t >= end - window``; ``window`` is ``WINDOW_S``, or a third
    of the span when that is shorter. Raises ``BenchError`` with fewer than
    two samples (no slope).
    """
    if len(rss) < 2:
        raise BenchError("a soak needs at least two RSS samples (run it longer)")
    start, end = rss[0][0], rss[-1][0]
    span = end - start
    window = min(WINDOW_S, span / 3)
    first = [mb for t, mb in rss if t <= start + window]
    last = [mb for t, mb in rss if t >= end - window]
    first_mb = sum(first) / len(first)
    last_mb = sum(last) / len(last)
    mean_t = sum(t for t, _ in rss) / len(rss)
    mean_mb = sum(mb for _, mb in rss) / len(rss)
    var_t = sum((t - mean_t) ** 2 for t, _ in rss)
    cov = sum((t - mean_t) * (mb - mean_mb) for t, mb in rss)
    slope_per_s = cov / var_t if var_t > 0 else 0.0
    growth = last_mb - first_mb
    return SoakFigures(
        samples=len(rss),
        window_s=window,
        first_mb=first_mb,
        last_mb=last_mb,
        growth_mb=growth,
        slope_mb_per_min=slope_per_s * 60,
        max_mb=max(mb for _, mb in rss),
        flat=growth <= FLAT_TOLERANCE_MB,
    )


@attrs.define
class SoakRun:
    """What one soak measured (the agent in this process, the venue paced)."""

    rows: int
    seconds: float
    latencies_s: list[float]
    cpu: dict[str, float | None]
    agent_cpu_s: float
    rss: list[tuple[float, float]]
    # Entries of the agent's bounded caches at the start and the end of the soak.
    caches: tuple[dict[str, int], dict[str, int]]


def cache_entries(agent: Any) -> dict[str, int]:
    """Entries in the agent's bounded caches, which fill towards their bounds early in a
    run and so explain RSS growth that is not a leak: the dedup windows
    (pipeline/dedup.py: 32,768 keys, 30-60 s), the decimal literal memo
    (numbers.py: 8,192), the Binance parser's checked literals
    (providers/binance/sansio.py: 16,384) and the numeric / int4[] encoding
    memos (db/copy_rows.py: 16,384 each); the memos (memo.py) swing between
    half their bound and the bound once full."""
    from mdagent import numbers
    from mdagent.db import copy_rows
    from mdagent.providers.binance import sansio as binance_sansio

    normalizer = getattr(agent, "normalizer", None)
    states = normalizer.states.values() if normalizer is not None else ()
    return {
        "dedup_keys": sum(len(s.recent) for s in states if s.recent is not None),
        "decimal_literals": len(numbers._LITERALS),
        "binance_checked_literals": len(binance_sansio._CHECKED),
        "numeric_encodings": len(copy_rows._numeric_cache),
        "array_encodings": len(copy_rows._array_cache),
    }


async def run_soak_phase(
    config: Config, dsn: str, venue: Venue, warmup_s: float, duration_s: float
) -> SoakRun:
    """Run the agent for ``warmup_s`` + ``duration_s``; RSS every ``RSS_STEP_S`` after the warm-up."""
    from mdagent.pipeline.agent import Agent

    agent = Agent(config, dsn, handle_signals=False)
    rss: list[tuple[float, float]] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            await trio.sleep(warmup_s)
            rows0 = agent.writer.rows_committed
            del agent.writer.latencies_s[:]
            cpu0 = CpuSample.take(venue.proc.pid)
            caches0 = cache_entries(agent)
            started = trio.current_time()
            ends = started + duration_s
            while True:
                now = trio.current_time()
                rss.append((now - started, (memory_kb("VmRSS") or 0) / 1024))
                if now >= ends or venue.proc.poll() is not None:
                    break
                await trio.sleep_until(min(ends, now + RSS_STEP_S))
            cpu1 = CpuSample.take(venue.proc.pid)
            rows1 = agent.writer.rows_committed
            latencies = list(agent.writer.latencies_s)
            caches1 = cache_entries(agent)
            agent.request_shutdown()
    finally:
        agent.copy_writer.close()
    if venue.proc.poll() is not None:
        raise BenchError(f"the fake venue exited during the soak (status {venue.proc.returncode})")
    if rows1 <= rows0:
        raise BenchError("the agent committed nothing during the soak")
    return SoakRun(
        rows1 - rows0,
        cpu1.wall - cpu0.wall,
        latencies,
        cpu_percent(cpu0, cpu1),
        cpu1.agent_s - cpu0.agent_s,
        rss,
        (caches0, caches1),
    )


def collect_soak(settings: Settings, soak_s: float) -> dict[str, Any]:
    """Run a soak of ``soak_s`` seconds and return its figures (a JSON-able dict)."""
    names = settings.symbol_names()
    n_conn = settings.connections()
    rate = settings.venue_rate()  # the venue's pace for this total (testing kit)
    with (
        database_server(settings.dsn) as server,
        fresh_database(server, "soak") as dsn,
        fake_venue(settings.provider, names, rate, n_conn, late_trades=False) as venue,
    ):
        run = trio.run(
            run_soak_phase, agent_config(settings, venue), dsn, venue, settings.warmup_s, soak_s
        )
    figures = soak_figures(run.rss)
    lat = sorted(run.latencies_s)
    rate = run.rows / run.seconds if run.seconds > 0 else 0.0
    return {
        "provider": settings.provider,
        "symbols": settings.symbols,
        "connections": n_conn,
        "soak_s": soak_s,
        "rate_target": settings.latency_rate,
        "committed_rows_per_s": round(rate, 1),
        "ratio_committed_to_rate": round(rate / settings.latency_rate, 3),
        "rows": run.rows,
        "cpu_percent": run.cpu,
        "cpu_us_per_event": round(1e6 * run.agent_cpu_s / run.rows, 2),
        "latency_p50_ms": round(percentile(lat, 50) * 1000, 2),
        "latency_p99_ms": round(percentile(lat, 99) * 1000, 2),
        "latency_samples": len(lat),
        "rss_samples": figures.samples,
        "rss_window_s": round(figures.window_s, 1),
        "rss_first_window_mb": round(figures.first_mb, 1),
        "rss_last_window_mb": round(figures.last_mb, 1),
        "rss_growth_mb": round(figures.growth_mb, 1),
        "rss_slope_mb_per_min": round(figures.slope_mb_per_min, 3),
        "rss_max_mb": round(figures.max_mb, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_flat": figures.flat,
        "rss_flat_tolerance_mb": FLAT_TOLERANCE_MB,
        "rss_series_mb": [[round(t, 1), round(mb, 1)] for t, mb in run.rss],
        "cache_entries_start": run.caches[0],
        "cache_entries_end": run.caches[1],
    }


def format_soak(f: dict[str, Any]) -> str:
    """The soak's figures as the report ``mdagent bench --soak`` prints."""
    verdict = "flat" if f["rss_flat"] else "NOT flat"
    window = f["rss_window_s"]
    lines = [
        f"mdagent bench --soak: provider {f['provider']}, {f['symbols']} symbols over "
        f"{f['connections']} connection(s), venue paced at {f['rate_target']:,.0f} events/s "
        f"for {f['soak_s']:g} s",
        f"  committed rows/s ........... {f['committed_rows_per_s']:,.0f}"
        f"  ({f['ratio_committed_to_rate']:.3f} of the rate, {f['rows']:,} rows)",
        f"  agent CPU per event ........ {f['cpu_us_per_event']:.2f} us",
        f"  event time -> commit ....... p50 {f['latency_p50_ms']:.1f} ms, "
        f"p99 {f['latency_p99_ms']:.1f} ms  (the last {f['latency_samples']:,} sampled trades)",
        f"  RSS first {window:g} s, last {window:g} s .. {f['rss_first_window_mb']:.1f} MB, "
        f"{f['rss_last_window_mb']:.1f} MB  (growth {f['rss_growth_mb']:+.1f} MB, "
        f"{f['rss_samples']} samples)",
        f"  RSS slope .................. {f['rss_slope_mb_per_min']:+.2f} MB/min"
        f"  (max {f['rss_max_mb']:.1f} MB, peak {f['peak_rss_mb']:.1f} MB)",
        f"  memory: {verdict} (growth <= {f['rss_flat_tolerance_mb']:g} MB)",
    ]
    if f["ratio_committed_to_rate"] < KEPT_UP_RATIO:
        lines.append(
            f"  (the agent fell behind, {f['ratio_committed_to_rate']:.3f} of the rate: RSS "
            "includes the backlog its bounded channels and batches hold, not only what "
            "grows with time)"
        )
    lines += [
        "  RSS by minute .............. "
        + ", ".join(f"{mb:.0f}" for t, mb in f["rss_series_mb"] if t % 60 < RSS_STEP_S)
        + " MB",
        "  cache entries, start -> end: "
        + ", ".join(
            f"{name} {f['cache_entries_start'][name]:,} -> {n:,}"
            for name, n in f["cache_entries_end"].items()
        ),
    ]
    return "\n".join(lines)
