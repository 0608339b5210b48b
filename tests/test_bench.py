"""`mdagent bench` smoke run: every figure is there and is a positive number.

No timing thresholds: the bench prints figures, and a slow CI box is not a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

import pytest

from mdagent.bench import Settings, collect, format_report, run_bench
from mdagent.bench.agent_phase import agent_config
from mdagent.bench.setup import Venue
from mdagent.bench.sharded import bucket_quantile
from mdagent.config import max_workers
from mdagent.db.embedded import _start_time as start_time
from mdagent.shards.assign import Shard, shard_of_source, shard_sources
from tests.test_shards_process import alive

NUMBERS = (
    "agent_committed_rows_per_s",
    "agent_max_rows",
    "latency_committed_rows_per_s",
    "latency_samples",
    "latency_p50_ms",
    "latency_p99_ms",
    "latency_max_ms",
    "peak_rss_mb",
    "bare_ws_frames_per_s",
    "bare_ws_events_per_s",
    "websockets_frames_per_s",
    "websockets_events_per_s",
    "ratio_committed_to_websockets",
    "agent_cpu_us_per_event",
    "latency_cpu_us_per_event",
    "ratio_paced_committed_to_rate",
    "bare_copy_rows_per_s",
    "bare_copy_rows",
    "ratio_committed_to_bare_ws",
    "ratio_committed_to_bare_copy",
    "cpu_count",
)


def bench_args(pg_server_dsn: str, **changes: object) -> argparse.Namespace:
    values: dict[str, object] = {
        "provider": "binance",
        "symbols": 2,
        "duration": 2.0,
        "latency_rate": 1000.0,
        "latency_duration": 2.0,
        "dsn": pg_server_dsn,
        "json": False,
    }
    values.update(changes)
    return argparse.Namespace(**values)


def test_bench_smoke_reports_every_figure(pg_server_dsn: str) -> None:
    figures = collect(Settings.from_args(bench_args(pg_server_dsn))).figures()
    for key in NUMBERS:
        value = figures[key]
        assert isinstance(value, int | float) and value > 0, (key, value)
    assert figures["latency_p50_ms"] <= figures["latency_p99_ms"] <= figures["latency_max_ms"]
    assert json.loads(json.dumps(figures)) == figures  # the --json form
    # One process: its peak RSS is the memory figure (nothing shared to split).
    assert figures["peak_memory_mb"] == figures["peak_rss_mb"]
    assert figures["peak_pss_mb"] is None

    report = format_report(figures)
    for label in (
        "cores",
        "committed rows/s",
        "event time -> commit",
        "p50",
        "p99",
        "peak RSS",
        "reference A",
        "frames/s",
        "reference B",
        "rows/s",
        "committed / bare WS",
        "committed / bare COPY",
        "reference A3",
        "committed / websockets",
        "agent CPU per committed event",
        "rate to 1M / rate to 200k",
    ):
        assert label in report, label
    assert re.search(r"p99 [0-9.]+ ms", report)
    assert "target missed" in report or "all targets met" in report


def test_bench_failure_to_run_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    bad = bench_args("postgresql://127.0.0.1:1/nothing?connect_timeout=2")
    assert run_bench(bad) == 1
    assert "mdagent bench: failed" in capsys.readouterr().err


def test_bench_paced_phase_defaults_to_the_providers_target(pg_server_dsn: str) -> None:
    binance = Settings.from_args(
        bench_args(pg_server_dsn, latency_rate=None, latency_duration=None)
    )
    assert (binance.latency_rate, binance.latency_duration_s) == (40_000.0, 30.0)
    polygon = Settings.from_args(
        bench_args(pg_server_dsn, provider="polygon", latency_rate=None, latency_duration=None)
    )
    assert (polygon.latency_rate, polygon.latency_duration_s) == (5_000.0, 10.0)
    given = Settings.from_args(bench_args(pg_server_dsn, latency_rate=7.0))
    assert given.latency_rate == 7.0


def test_rate_to_counts_from_the_first_commit() -> None:
    from mdagent.bench.agent_phase import AgentPhase

    timeline = [(0.0, 0), (1.0, 0), (2.0, 100_000), (3.0, 200_000), (5.0, 1_000_000)]
    phase = AgentPhase(1, 1.0, [], {}, (0.0, 0.0), 2.0, timeline)
    # From the last sample without a commit (t=1): 200k by t=3, 1M by t=5.
    assert phase.rate_to(200_000) == 100_000.0
    assert phase.rate_to(1_000_000) == 250_000.0
    assert phase.rate_to(2_000_000) is None
    assert phase.cpu_us_per_row == 2e6


def test_soak_figures_compare_the_first_and_last_minute() -> None:
    from mdagent.bench.soak import FLAT_TOLERANCE_MB, soak_figures

    rss = [(0.0, 100.0), (60.0, 102.0), (120.0, 104.0), (180.0, 106.0), (240.0, 108.0)]
    rss.append((300.0, 110.0))
    f = soak_figures(rss)
    # First minute: t <= 60 (100, 102); last: t >= 240 (108, 110).
    assert (f.samples, f.window_s, f.first_mb, f.last_mb) == (6, 60.0, 101.0, 109.0)
    assert f.growth_mb == 8.0 and f.max_mb == 110.0
    assert f.slope_mb_per_min == pytest.approx(2.0)
    assert f.flat is (FLAT_TOLERANCE_MB >= 8.0)


def test_soak_figures_of_a_short_run_use_thirds_and_flag_growth() -> None:
    from mdagent.bench.soak import soak_figures

    f = soak_figures([(0.0, 50.0), (3.0, 50.0), (6.0, 80.0), (9.0, 80.0)])
    # Window = a third of the 9 s span: first t <= 3, last t >= 6.
    assert (f.window_s, f.first_mb, f.last_mb, f.growth_mb) == (3.0, 50.0, 80.0, 30.0)
    # Least squares: cov 180 / var 45 = 4 MB/s.
    assert f.slope_mb_per_min == pytest.approx(240.0)
    assert f.flat is False


def test_soak_needs_two_samples_and_a_positive_length(pg_server_dsn: str) -> None:
    from mdagent.bench.soak import soak_figures
    from mdagent.testing.kit import BenchError

    with pytest.raises(BenchError, match="two RSS samples"):
        soak_figures([(0.0, 10.0)])
    with pytest.raises(BenchError, match="--soak"):
        Settings.from_args(bench_args(pg_server_dsn, soak=0.0))


def test_bench_soak_smoke_reports_rss_figures(
    pg_server_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_bench(bench_args(pg_server_dsn, soak=3.0, json=True)) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["rows"] > 0 and figures["rss_samples"] >= 2
    assert figures["rss_series_mb"][0][0] == 0.0
    for key in ("rss_first_window_mb", "rss_last_window_mb", "rss_max_mb", "peak_rss_mb"):
        assert figures[key] > 0, key
    assert isinstance(figures["rss_flat"], bool)
    from mdagent.bench.soak import format_soak

    report = format_soak(figures)
    for label in ("committed rows/s", "RSS first", "RSS slope", "memory:", "RSS by minute"):
        assert label in report, label
    assert figures["cache_entries_end"]["dedup_keys"] == 0  # Binance: ids identify, no window
    assert "numeric_encodings" in report
    # A run the agent did not keep up with says so: RSS then holds the backlog.
    assert "fell behind" in format_soak(dict(figures, ratio_committed_to_rate=0.8))
    assert "fell behind" not in format_soak(dict(figures, ratio_committed_to_rate=1.0))


def test_bench_with_worker_processes_reports_the_scaling_table(pg_server_dsn: str) -> None:
    args = bench_args(pg_server_dsn, symbols=4, workers=2)
    figures = collect(Settings.from_args(args)).figures()
    assert figures["workers"] == 2
    assert [row["workers"] for row in figures["scaling"]] == [1, 2]
    for row in figures["scaling"]:
        assert row["committed_rows_per_s"] > 0 and row["cpu_us_per_event"] > 0
    assert figures["scaling"][0]["peak_rss_mb"] is None  # in this process: the run's peak
    assert figures["scaling"][0]["peak_pss_mb"] is None
    # The parent's and the workers' PSS summed: at most their summed peak RSS,
    # which counts the pages they share (the interpreter's) once per process.
    two = figures["scaling"][1]
    assert 0 < two["peak_pss_mb"] < two["peak_rss_mb"]
    assert 0 < figures["peak_pss_mb"] < figures["peak_rss_mb"]
    assert figures["peak_memory_mb"] == figures["peak_pss_mb"]
    assert (
        figures["peak_memory_measure"]
        == "peak of the summed PSS of the parent, its zygote and its workers"
    )
    assert figures["latency_from"] == "histogram" and figures["latency_max_ms"] is None
    assert 0 < figures["latency_p50_ms"] <= figures["latency_p99_ms"]
    assert json.loads(json.dumps(figures)) == figures
    report = format_report(figures)
    assert "2 worker processes" in report and "max rate by worker processes" in report
    assert "from the workers' histogram" in report
    assert "peak summed PSS" in report and "summed peak RSS" in report


def test_bench_workers_out_of_range_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    # A usage error (exit 2), as on the command line; it was a failure to run (1).
    assert run_bench(bench_args("embedded", workers=max_workers() + 1)) == 2
    assert f"--workers must be 1 to {max_workers()}" in capsys.readouterr().err


def test_bucket_quantile_interpolates_like_histogram_quantile() -> None:
    inf = float("inf")
    # 100 observations: 50 in (0, 0.1], 40 in (0.1, 0.25], 10 in (0.25, 0.5].
    buckets = [(0.1, 50.0), (0.25, 90.0), (0.5, 100.0), (inf, 100.0)]
    assert bucket_quantile(buckets, 0.5) == pytest.approx(0.1)
    assert bucket_quantile(buckets, 0.7) == pytest.approx(0.1 + 0.15 * 20 / 40)
    assert bucket_quantile(buckets, 0.99) == pytest.approx(0.25 + 0.25 * 9 / 10)
    # Past the largest finite bound: that bound (histogram_quantile's answer).
    assert bucket_quantile([(0.1, 1.0), (inf, 10.0)], 0.99) == pytest.approx(0.1)
    assert bucket_quantile([(0.1, 0.0), (inf, 0.0)], 0.5) is None


def test_single_connection_sources_are_spread_one_per_worker() -> None:
    settings = Settings.from_args(bench_args("embedded", provider="polygon", symbols=6, workers=3))
    venue = Venue(proc=None, ws_url="ws://x", rest_url="http://x", api_keys=["k0", "k1", "k2"])  # type: ignore[arg-type]
    config = agent_config(settings, venue, 3)
    assert len(config.sources) == 3
    assert sorted(shard_of_source(s, 3) for s in config.sources) == [0, 1, 2]
    assert sorted(sym for s in config.sources for sym in s.symbols) == settings.symbol_names()
    for source in config.sources:
        assert source.api_key() in ("k0", "k1", "k2")


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_paced_venue_rate_is_the_total_over_the_connections_the_workers_open(
    workers: int,
) -> None:
    """A split Binance source opens a connection in each worker holding some of its
    symbols, and the fake paces each connection: the paced phase with 2 workers
    ran at twice its rate (8 connections at 40,000 / 4 each)."""
    args = bench_args("embedded", symbols=20, latency_rate=40_000.0, workers=workers)
    settings = Settings.from_args(args)
    venue = Venue(proc=None, ws_url="ws://x", rest_url="http://x", api_keys=["k"] * 4)  # type: ignore[arg-type]
    config = agent_config(settings, venue, workers)
    opened = sum(len(shard_sources(config.sources, Shard(i, workers))) for i in range(workers))
    assert opened >= len(config.sources)
    assert settings.venue_rate(workers) * opened == pytest.approx(40_000.0)


def test_paced_polygon_venue_paces_one_tape_for_every_connection() -> None:
    settings = Settings.from_args(
        bench_args("embedded", provider="polygon", symbols=6, latency_rate=5000.0, workers=3)
    )
    assert settings.opened_connections(3) == 3
    assert settings.venue_rate(3) == 5000.0


def _children(pid: int) -> dict[int, str]:
    """Direct children of ``pid``: pid -> command line."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids = [int(p) for p in f.read().split()]
    except OSError:
        return {}
    found = {}
    for child in pids:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                found[child] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            pass
    return found


def test_a_sigterm_stops_the_bench_and_everything_it_started() -> None:
    """Python's default SIGTERM ended the bench where it stood: its embedded
    PostgreSQL and its fake venue kept running. Now it unwinds like Ctrl-C."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    bench = subprocess.Popen(
        [sys.executable, "-m", "mdagent", "bench", "--provider", "polygon", "--symbols", "2",
         "--duration", "60", "--latency-duration", "1"],
        env={**os.environ, "PYTHONPATH": str(repo)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        children: dict[int, str] = {}
        while time.monotonic() < deadline:
            children = _children(bench.pid)
            kinds = " ".join(children.values())
            if "bin/postgres" in kinds and "fake-venue" in kinds:
                break
            assert bench.poll() is None, bench.stderr.read() if bench.stderr else ""
            time.sleep(0.2)
        else:
            raise AssertionError(f"the bench never ran its server and venue: {children}")
        started = {pid: start_time(pid) for pid in children}
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=120) == 1
        deadline = time.monotonic() + 60

        def running(pid: int) -> bool:  # that very process, not a reused pid
            return alive(pid) and start_time(pid) == started[pid]

        while any(map(running, started)) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = {pid: children[pid] for pid in started if running(pid)}
        assert not left, f"still running after the bench ended: {left}"
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()


def test_summed_pss_counts_the_pages_processes_share_once() -> None:
    """Two interpreters map the same libpython: their RSS counts its pages in
    each, their PSS splits them, so the summed PSS is below the summed RSS."""
    from mdagent.bench.sharded import summed_pss_mb
    from mdagent.bench.usage import memory_kb, pss_kb

    code = "import sys; print('ready', flush=True); sys.stdin.read()"
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"  # its interpreter is mapped by now
        pids = [os.getpid(), child.pid]
        rss = sum(memory_kb("VmRSS", pid) or 0 for pid in pids) / 1024
        pss = summed_pss_mb(pids)
        assert 0 < pss < rss
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
        assert child.stdout is not None
        child.stdout.close()
    assert pss_kb(child.pid) is None  # gone: unreadable, not an error
