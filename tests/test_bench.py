"""`mdagent bench` smoke run: every figure is there and is a positive number.

No timing thresholds: the bench prints figures, and a slow CI box is not a failure.
"""

from __future__ import annotations

import argparse
import json
import re

import pytest

from mdagent.bench import Settings, collect, format_report, run_bench

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
    ):
        assert label in report, label
    assert re.search(r"p99 [0-9.]+ ms", report)
    assert "target missed" in report or "all targets met" in report


def test_bench_failure_to_run_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    bad = bench_args("postgresql://127.0.0.1:1/nothing?connect_timeout=2")
    assert run_bench(bad) == 1
    assert "mdagent bench: failed" in capsys.readouterr().err
