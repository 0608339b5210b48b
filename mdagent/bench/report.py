"""The whole run: collect the phases and references, print the figures and targets."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import trio

from mdagent.bench.agent_phase import AgentPhase, agent_config, percentile, run_agent_phase
from mdagent.bench.copy_ref import CopyReference, run_copy_reference
from mdagent.bench.receive import (
    ReceiveReference,
    run_lean_receive_reference,
    run_receive_reference,
    run_websockets_reference,
)
from mdagent.bench.settings import Settings
from mdagent.bench.setup import database_server, fake_venue, fresh_database
from mdagent.bench.sharded import bucket_quantile
from mdagent.bench.usage import memory_kb, peak_rss_mb
from mdagent.testing.kit import BenchError, BenchUsageError, kit_for

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

# Targets (printed next to the figures; never an exit status). The ratio
# targets are each provider's (testing/<provider>/bench.py).
TARGET_P99_S = 0.250
# "Committed at 1M events within 10% of the rate at 200k" (issue 14).
SHORT_RUN_ROWS = 200_000
LONG_RUN_ROWS = 1_000_000
TARGET_LONG_TO_SHORT = 0.9
# The paced phase commits everything the venue sent: at least this share of its rate.
TARGET_PACED_COMMITTED = 0.99


@attrs.define
class Results:
    settings: Settings
    max_phase: AgentPhase
    latency_phase: AgentPhase
    rss_before_mb: float
    # One process: its peak RSS (VmHWM). Worker processes: the parent's, the
    # zygote's and the workers' peak RSS summed (an upper bound), and the peak
    # of their summed PSS, the figure compared with the target (bench/sharded.py).
    peak_rss_mb: float
    peak_pss_mb: float | None
    receive: ReceiveReference
    lean_receive: ReceiveReference
    websockets_receive: ReceiveReference
    copy: CopyReference
    # Max-rate phases with 1 .. settings.workers worker processes (the last
    # is max_phase); only the last when workers is 1.
    scaling: list[AgentPhase] = attrs.field(factory=list)

    def figures(self) -> dict[str, Any]:
        s = self.settings
        p50, p99, worst, samples = latency_ms(self.latency_phase)
        committed = self.max_phase.rate
        bare_ws = self.receive.events_per_s
        websockets_ws = self.websockets_receive.events_per_s
        short = self.max_phase.rate_to(SHORT_RUN_ROWS)
        long = self.max_phase.rate_to(LONG_RUN_ROWS)
        return {
            "provider": s.provider,
            "cpu_count": os.cpu_count(),
            "symbols": s.symbols,
            "connections": s.connections(s.workers),
            "workers": s.workers,
            "channels": list(s.profile.channels),
            "duration_s": s.duration_s,
            "warmup_s": s.warmup_s,
            "agent_committed_rows_per_s": round(committed, 1),
            "agent_max_rows": self.max_phase.rows,
            "agent_max_cpu_percent": self.max_phase.cpu,
            "agent_max_rss_mb_start_end": [round(v, 1) for v in self.max_phase.rss_mb],
            "agent_cpu_us_per_event": round(self.max_phase.cpu_us_per_row, 2),
            "rate_to_200k_rows_per_s": None if short is None else round(short, 1),
            "rate_to_1m_rows_per_s": None if long is None else round(long, 1),
            "ratio_1m_to_200k": None if short is None or long is None else round(long / short, 3),
            "latency_rate_target": s.latency_rate,
            "latency_duration_s": s.latency_duration_s,
            "latency_committed_rows_per_s": round(self.latency_phase.rate, 1),
            "latency_samples": samples,
            "latency_from": "histogram" if self.latency_phase.latency_buckets else "samples",
            "latency_p50_ms": p50,
            "latency_p99_ms": p99,
            "latency_max_ms": worst,
            "latency_cpu_percent": self.latency_phase.cpu,
            "latency_cpu_us_per_event": round(self.latency_phase.cpu_us_per_row, 2),
            "ratio_paced_committed_to_rate": round(self.latency_phase.rate / s.latency_rate, 3),
            "rss_before_mb": round(self.rss_before_mb, 1),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "peak_pss_mb": _rounded(self.peak_pss_mb),
            # The figure the memory target is compared with, and what it is.
            "peak_memory_mb": round(
                self.peak_rss_mb if self.peak_pss_mb is None else self.peak_pss_mb, 1
            ),
            "peak_memory_measure": "peak RSS of the process"
            if self.peak_pss_mb is None
            else "peak of the summed PSS of the parent, its zygote and its workers",
            "bare_ws_frames_per_s": round(self.receive.frames_per_s, 1),
            "bare_ws_events_per_s": round(bare_ws, 1),
            "bare_ws_seconds": round(self.receive.seconds, 2),
            "bare_copy_rows_per_s": round(self.copy.rows_per_s, 1),
            "bare_copy_rows": self.copy.rows,
            "bare_copy_batch_rows": self.copy.batch_rows,
            "bare_copy_skipped_events": self.copy.skipped_events,
            "lean_ws_frames_per_s": round(self.lean_receive.frames_per_s, 1),
            "lean_ws_events_per_s": round(self.lean_receive.events_per_s, 1),
            "websockets_frames_per_s": round(self.websockets_receive.frames_per_s, 1),
            "websockets_events_per_s": round(websockets_ws, 1),
            "ratio_committed_to_websockets": round(committed / websockets_ws, 3),
            "ratio_committed_to_bare_ws": round(committed / bare_ws, 3),
            "ratio_committed_to_lean_ws": round(committed / self.lean_receive.events_per_s, 3),
            "ratio_committed_to_bare_copy": round(committed / self.copy.rows_per_s, 3),
            "scaling": [
                {
                    "workers": phase.workers,
                    "committed_rows_per_s": round(phase.rate, 1),
                    "ratio_committed_to_bare_copy": round(phase.rate / self.copy.rows_per_s, 3),
                    "ratio_committed_to_websockets": round(phase.rate / websockets_ws, 3),
                    "cpu_us_per_event": round(phase.cpu_us_per_row, 2),
                    "cpu_percent": phase.cpu,
                    "peak_rss_mb": _rounded(phase.peak_rss_mb),
                    "peak_pss_mb": _rounded(phase.peak_pss_mb),
                }
                for phase in self.scaling
            ]
            if len(self.scaling) > 1
            else [],
        }


def latency_ms(phase: AgentPhase) -> tuple[float, float, float | None, int]:
    """p50, p99, max (None: not known) event -> commit in ms, and the sample count.

    From the writer's samples in one process; from the workers' histogram
    with worker processes (bench/sharded.py), where the max is not known.
    """
    if phase.latency_buckets:
        p50 = bucket_quantile(phase.latency_buckets, 0.50)
        p99 = bucket_quantile(phase.latency_buckets, 0.99)
        if p50 is None or p99 is None:
            raise BenchError("no latency samples were taken")
        return round(p50 * 1000, 2), round(p99 * 1000, 2), None, int(phase.latency_buckets[-1][1])
    lat = sorted(phase.latencies_s)
    return (
        round(percentile(lat, 50) * 1000, 2),
        round(percentile(lat, 99) * 1000, 2),
        round(lat[-1] * 1000, 2),
        len(lat),
    )


def collect(settings: Settings) -> Results:
    names = settings.symbol_names()
    workers = settings.workers
    n_conn = settings.connections(workers)
    provider = settings.provider
    rss_before = (memory_kb("VmRSS") or 0) / 1024
    scaling = []
    with database_server(settings.dsn) as server:
        # The same max-rate phase with 1, 2, ... workers (only N when N is 1).
        for n in range(1, workers + 1) if workers > 1 else [1]:
            with (
                fresh_database(server, "max") as dsn,
                fake_venue(provider, names, 0, settings.connections(n)) as venue,
            ):
                config = agent_config(settings, venue, n)
                scaling.append(
                    trio.run(
                        _phase_runner(n), config, dsn, venue, settings.warmup_s, settings.duration_s
                    )
                )
        max_phase = scaling[-1]
        # The venue's pace for this total over the connections the agent opens
        # (with workers, a split source opens one connection in each worker).
        with (
            fresh_database(server, "lat") as dsn,
            fake_venue(
                provider, names, settings.venue_rate(workers), n_conn, late_trades=False
            ) as venue,
        ):
            config = agent_config(settings, venue, workers)
            latency_phase = trio.run(
                _phase_runner(workers),
                config,
                dsn,
                venue,
                min(settings.warmup_s, 2.0),
                settings.latency_duration_s,
            )
        peak_pss = None
        if workers == 1:
            peak = peak_rss_mb()
        else:
            peak = max(p.peak_rss_mb or 0.0 for p in (max_phase, latency_phase))
            peak_pss = max(p.peak_pss_mb or 0.0 for p in (max_phase, latency_phase))
        with fake_venue(provider, names, 0, 1) as venue:
            receive = trio.run(run_receive_reference, provider, venue, names, settings.reference_s)
        with fake_venue(provider, names, 0, 1) as venue:
            lean_receive = trio.run(
                run_lean_receive_reference, provider, venue, names, settings.reference_s
            )
        with fake_venue(provider, names, 0, 1) as venue:
            websockets_receive = run_websockets_reference(
                provider, venue, names, settings.reference_s
            )
        with fresh_database(server, "copy") as dsn:
            copy = run_copy_reference(
                dsn, provider, receive.captured, config.database.batch_max_rows
            )
    return Results(
        settings,
        max_phase,
        latency_phase,
        rss_before,
        peak,
        peak_pss,
        receive,
        lean_receive,
        websockets_receive,
        copy,
        scaling,
    )


def _phase_runner(workers: int) -> Callable[..., Awaitable[AgentPhase]]:
    """The agent phase for ``workers`` processes: in this process, or with children."""
    if workers == 1:
        return run_agent_phase
    from mdagent.bench.sharded import run_sharded_phase

    return run_sharded_phase


def _fmt_cpu(cpu: dict[str, float | None]) -> str:
    def one(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.0f}%"

    return (
        f"agent {one(cpu['agent_process'])}, venue {one(cpu['venue_process'])}, "
        f"whole machine {one(cpu['machine'])} (100% = one core)"
    )


def format_report(f: dict[str, Any]) -> str:
    profile = kit_for(f["provider"]).bench
    unit = "events" if profile.counts_events else "frames"
    lines = [
        f"mdagent bench: provider {f['provider']}, {f['symbols']} symbols over "
        f"{f['connections']} connection(s), channels {','.join(f['channels'])}"
        + (f", {f['workers']} worker processes" if f["workers"] > 1 else ""),
        f"machine: {f['cpu_count']} cores (os.cpu_count)",
        "",
        f"agent, venue at max rate ({f['duration_s']:g} s after {f['warmup_s']:g} s warm-up):",
        f"  committed rows/s ........... {f['agent_committed_rows_per_s']:,.0f}"
        f"  ({f['agent_max_rows']:,} rows)",
        f"  cpu ........................ {_fmt_cpu(f['agent_max_cpu_percent'])}",
        (
            "  RSS at window start, end ... "
            if f["workers"] == 1
            else "  summed PSS at start, end ... "
        )
        + "{:.1f} MB, {:.1f} MB".format(*f["agent_max_rss_mb_start_end"]),
        f"agent, venue at {f['latency_rate_target']:,.0f} events/s "
        f"({f['latency_duration_s']:g} s):",
        f"  committed rows/s ........... {f['latency_committed_rows_per_s']:,.0f}",
        f"  event time -> commit ....... p50 {f['latency_p50_ms']:.1f} ms, "
        f"p99 {f['latency_p99_ms']:.1f} ms, max {_opt(f['latency_max_ms'], '.1f')} ms"
        f"  ({f['latency_samples']} sampled trades"
        + (", from the workers' histogram)" if f["latency_from"] == "histogram" else ")"),
        f"  cpu ........................ {_fmt_cpu(f['latency_cpu_percent'])}",
        *_memory_lines(f),
        *_scaling_lines(f),
        "",
        *_receive_lines(
            f"reference A, bare get_message() on one connection ({f['bare_ws_seconds']:g} s):",
            f,
            "bare_ws",
            profile.counts_events,
        ),
        *_receive_lines(
            "reference A2, bare receive with mdagent's own client (providers/wsclient.py), "
            "one connection:",
            f,
            "lean_ws",
            profile.counts_events,
        ),
        *_receive_lines(
            "reference A3, bare recv() with the websockets library (asyncio), one connection:",
            f,
            "websockets",
            profile.counts_events,
        ),
        f"reference B, bare binary COPY of the same rows ({f['bare_copy_rows']:,} rows, "
        f"{f['bare_copy_batch_rows']} per transaction):",
        f"  rows/s ..................... {f['bare_copy_rows_per_s']:,.0f}",
    ]
    if f["bare_copy_skipped_events"]:
        lines.append(
            f"  ({f['bare_copy_skipped_events']:,} bar/other events not copied: they need an upsert)"
        )
    lines += [
        "",
        "per event and over the run:",
        f"  agent CPU per committed event .. {f['agent_cpu_us_per_event']:.2f} us"
        f"  (max rate; {f['latency_cpu_us_per_event']:.2f} us paced)"
        + _target(profile.cpu_us_target, "<="),
        f"  committed rows/s to 200k, to 1M .. {_opt(f['rate_to_200k_rows_per_s'])}, "
        f"{_opt(f['rate_to_1m_rows_per_s'])}  (from the first commit)",
        "",
        "ratios:",
        f"  committed / websockets {unit}/s .. {f['ratio_committed_to_websockets']:.2f}"
        + _target(profile.ws_ratio_target),
        f"  committed / bare WS {unit}/s .. {f['ratio_committed_to_bare_ws']:.2f}"
        "  (trio-websocket, for continuity)",
        f"  committed / own-client WS {unit}/s .. {f['ratio_committed_to_lean_ws']:.2f}"
        "  (informative: the agent's own reader, one connection)",
        f"  committed / bare COPY rows/s .. {f['ratio_committed_to_bare_copy']:.2f}"
        + _target(profile.copy_ratio_target),
        f"  rate to 1M / rate to 200k ..... {_opt(f['ratio_1m_to_200k'], '.3f')}"
        + _target(TARGET_LONG_TO_SHORT),
        f"  paced: committed / venue rate .. {f['ratio_paced_committed_to_rate']:.3f}"
        + _target(TARGET_PACED_COMMITTED),
        f"  p99 latency ................... {f['latency_p99_ms']:.1f} ms"
        f"  (target < {TARGET_P99_S * 1000:.0f} ms at {profile.paced_rate:,.0f} events/s)",
        (
            "  peak RSS ...................... "
            if f["workers"] == 1
            else "  peak summed PSS ............... "
        )
        + f"{f['peak_memory_mb']:.1f} MB  (target < {profile.rss_target_mb:.0f} MB)",
        "",
    ]
    missed = missed_targets(f)
    lines += [f"target missed: {m}" for m in missed] or ["all targets met"]
    return "\n".join(lines)


def _memory_lines(f: dict[str, Any]) -> list[str]:
    """The agent phases' peak memory: the process's peak RSS, or with worker
    processes the peak of their summed PSS (compared with the target) and the
    summed peak RSS (an upper bound)."""
    if f["workers"] == 1:
        return [
            f"peak RSS (agent phases) ...... {f['peak_rss_mb']:.1f} MB"
            f"  (RSS before: {f['rss_before_mb']:.1f} MB)"
        ]
    return [
        f"peak memory (agent phases) ... {f['peak_pss_mb']:.1f} MB: the PSS of the parent, "
        "the zygote and the workers summed, at its peak",
        "  (PSS splits each shared page between the processes mapping it, so the sum "
        "counts it once: the target is compared with it)",
        f"  summed peak RSS ............ {f['peak_rss_mb']:.1f} MB  (an upper bound: "
        "each shared page counted once per process)",
    ]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _scaling_lines(f: dict[str, Any]) -> list[str]:
    """The max-rate phase by worker processes (nothing with one)."""
    if not f["scaling"]:
        return []
    lines = [
        "max rate by worker processes (CPU and memory summed over parent, zygote, workers;"
        " ratios to this run's references):",
        "  workers  committed rows/s  / bare COPY  / websockets  CPU us/event"
        "  agent CPU %  peak RSS MB  peak PSS MB",
    ]
    for row in f["scaling"]:
        rss, pss = row["peak_rss_mb"], row["peak_pss_mb"]
        lines.append(
            f"  {row['workers']:>7}  {row['committed_rows_per_s']:>16,.0f}"
            f"  {row['ratio_committed_to_bare_copy']:>11.2f}"
            f"  {row['ratio_committed_to_websockets']:>12.2f}"
            f"  {row['cpu_us_per_event']:>12.2f}"
            f"  {_opt(row['cpu_percent']['agent_process'], '.0f'):>11}"
            f"  {'(process)' if rss is None else format(rss, '.1f'):>11}"
            f"  {'' if pss is None else format(pss, '.1f'):>11}"
        )
    return lines


def _receive_lines(title: str, f: dict[str, Any], key: str, counts_events: bool) -> list[str]:
    """A receive reference's lines: frames/s, and events/s where frames carry many."""
    lines = [title, f"  frames/s ................... {f[key + '_frames_per_s']:,.0f}"]
    if counts_events:
        lines.append(f"  events/s ................... {f[key + '_events_per_s']:,.0f}")
    return lines


def _opt(value: float | None, fmt: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _target(value: float | None, op: str = ">=") -> str:
    return f"  (target {op} {value})" if value is not None else ""


def missed_targets(f: dict[str, Any]) -> list[str]:
    """The provider's targets this run's figures miss, one line each."""
    profile = kit_for(f["provider"]).bench
    missed = []
    cpu_target = profile.cpu_us_target
    if cpu_target is not None and f["agent_cpu_us_per_event"] > cpu_target:
        missed.append(f"agent CPU per event {f['agent_cpu_us_per_event']:.2f} us > {cpu_target} us")
    ws_target = profile.ws_ratio_target
    if ws_target is not None and f["ratio_committed_to_websockets"] < ws_target:
        missed.append(
            f"committed / websockets = {f['ratio_committed_to_websockets']:.2f} < {ws_target}"
        )
    copy_target = profile.copy_ratio_target
    if copy_target is not None and f["ratio_committed_to_bare_copy"] < copy_target:
        missed.append(
            f"committed / bare COPY = {f['ratio_committed_to_bare_copy']:.2f} < {copy_target}"
        )
    long_short = f["ratio_1m_to_200k"]
    if long_short is not None and long_short < TARGET_LONG_TO_SHORT:
        missed.append(f"rate to 1M / rate to 200k = {long_short:.3f} < {TARGET_LONG_TO_SHORT}")
    if f["latency_rate_target"] == profile.paced_rate:
        if f["ratio_paced_committed_to_rate"] < TARGET_PACED_COMMITTED:
            missed.append(
                f"paced: committed {f['latency_committed_rows_per_s']:,.0f} rows/s of "
                f"{profile.paced_rate:,.0f}"
            )
        if f["latency_p99_ms"] > TARGET_P99_S * 1000:
            missed.append(
                f"p99 latency {f['latency_p99_ms']:.1f} ms > {TARGET_P99_S * 1000:.0f} ms"
            )
    if f["peak_memory_mb"] > profile.rss_target_mb:
        missed.append(
            f"{f['peak_memory_measure']} {f['peak_memory_mb']:.1f} MB"
            f" > {profile.rss_target_mb:.0f} MB"
        )
    return missed


def run_bench(args: argparse.Namespace) -> int:
    """The ``mdagent bench`` command: print the figures; 1 only if something failed to run."""
    from mdagent.logs import configure_logging

    configure_logging("warning", "console")
    try:
        settings = Settings.from_args(args)
        if settings.soak_s is not None:
            from mdagent.bench.soak import collect_soak, format_soak

            figures = collect_soak(settings, settings.soak_s)
            report = format_soak
        else:
            figures = collect(settings).figures()
            report = format_report
    except BenchUsageError as exc:
        print(f"mdagent: error: {exc} (see mdagent bench --help)", file=sys.stderr)
        return EXIT_USAGE
    except BenchError as exc:
        print(f"mdagent bench: failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # report any failure to run as exit 1, with its cause
        print(f"mdagent bench: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if getattr(args, "json", False):
        print(json.dumps(figures))
    else:
        print(report(figures))
    sys.stdout.flush()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mdagent.bench ...``: ``mdagent bench ...`` (the same options and checks)."""
    from mdagent.cli import main as cli_main

    return cli_main(["bench", *(sys.argv[1:] if argv is None else argv)])
