"""`mdagent bench --backfill`: a one-day trades backfill against the fake Binance.

Two phases on fresh databases of one server, in one run:

1. Weights off (a budget no request reaches): committed rows/s of the whole
   backfill (24 hour-jobs, 4 workers: exactly what ``mdagent backfill`` runs),
   next to reference C, a bare binary COPY of the same rows in transactions of
   the same size as the backfill's pages (1,000 rows). Target: >= 0.5.
2. Realistic weights: Binance's 6,000 per minute scaled to 600 per 6 s (the
   same rate, ten times the windows per minute), one job for the day (every
   page full). Committed rows per minute next to the budget's theoretical
   maximum: (limit / 25) pages of 1,000 rows per window. Target: within 10%.
   The fake counts every request that would have gone over the budget.

The venue runs in a process of its own, as in ``mdagent bench``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import attrs
import httpx
import psycopg
import trio

from mdagent.backfill.binance import WEIGHT_TRADES, BinanceHistory
from mdagent.backfill.plan import make_plan
from mdagent.backfill.progress import TERMINAL
from mdagent.backfill.worker import BackfillWorkers, JobStore, WorkerSettings
from mdagent.bench import database_server, fresh_database
from mdagent.db import jobs as jobs_sql
from mdagent.db.copy_rows import TRADES, register_encoded_dumpers, trade_rows
from mdagent.db.copy_writer import CopyWriter
from mdagent.pipeline.agent import tune_interpreter
from mdagent.pipeline.batches import WriteBatch
from mdagent.pipeline.metrics import Metrics
from mdagent.records import Trade
from mdagent.testing.binance.venue import FakeBinance
from mdagent.testing.kit import BenchError

DAY = "2026-11-01"
NEXT_DAY = "2026-11-02"
EVENTS_PER_S = 1.0  # about 150,000 trades in the day
PAGE_ROWS = 1000
SCALED_LIMIT = 600
SCALED_WINDOW_S = 6.0


@attrs.frozen
class Phase:
    rows: int
    seconds: float
    requests: int
    refused: int  # requests the fake refused for going over its weight budget
    windows: int = 0  # budget windows the run touched (wall clock)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def _day_us() -> tuple[int, int]:
    start = dt.datetime.fromisoformat(DAY).replace(tzinfo=dt.UTC)
    end = dt.datetime.fromisoformat(NEXT_DAY).replace(tzinfo=dt.UTC)
    return int(start.timestamp()) * 1_000_000, int(end.timestamp()) * 1_000_000


def _venue(limit: int, window_s: float) -> FakeBinance:
    venue = FakeBinance(
        symbols=["BTCUSDT"],
        seed=5,
        rest_weight_limit=limit,
        rest_weight_window_s=window_s,
        max_history=400_000,
    )
    venue.prefill_history(*_day_us(), events_per_s=EVENTS_PER_S)
    return venue  # (no stream connects: the market never moves past the day)


async def _backfill(
    dsn: str, rest_url: str, chunk_s: float, workers: int, window_s: float
) -> Phase:
    tune_interpreter()  # as `mdagent backfill` and the agent run
    plan = make_plan("binance", "BTCUSDT", "trades", DAY, NEXT_DAY, chunk_s=chunk_s)
    async with trio.open_nursery() as nursery:
        store = JobStore(dsn)
        ids = store.call(jobs_sql.plan, list(plan.jobs))
        history = BinanceHistory(rest_url)
        await history.start()
        settings = WorkerSettings(workers=workers, poll_s=0.02)
        pool = BackfillWorkers(dsn, {"binance": history}, Metrics(), settings, job_ids=ids)
        before = (await _venue_stats(rest_url))["rest_weighted_requests"]
        # Start just after a window boundary, so the windows touched say how
        # much budget time the run took (exchangeInfo's weight is in the first).
        await trio.sleep(window_s - time.time() % window_s + 0.3)
        first_window = int(time.time() // window_s)
        started = time.perf_counter()
        await nursery.start(pool.run)
        while True:
            rows = await trio.to_thread.run_sync(store.call, jobs_sql.jobs_by_id, ids)
            if all(j.status in TERMINAL for j in rows):
                break
            await trio.sleep(0.02)
        seconds = time.perf_counter() - started
        windows = int(time.time() // window_s) - first_window + 1
        store.close()
        nursery.cancel_scope.cancel()
    if any(j.status != "done" for j in rows):
        raise BenchError(
            f"backfill jobs did not complete: {[(j.id, j.status, j.error) for j in rows]}"
        )
    stored = _count(dsn)
    stats = await _venue_stats(rest_url)
    requests = stats["rest_weighted_requests"] - before
    return Phase(stored, seconds, requests, stats["rest_weight_refused"], windows)


async def _venue_stats(rest_url: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        reply = await client.get(f"{rest_url}/_fake/stats")
    stats: dict[str, Any] = reply.json()
    return stats


@contextlib.contextmanager
def _venue_process(limit: int, window_s: float) -> Iterator[str]:
    """The fake in its own process (as ``mdagent bench`` runs it): its CPU is not
    the client's. Yields the REST URL."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mdagent.bench_backfill",
            "--serve-venue",
            str(limit),
            str(window_s),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise BenchError("the fake venue did not start")
        yield str(json.loads(line)["rest_url"])
    finally:
        proc.terminate()
        proc.wait(10)


async def _serve_venue(limit: int, window_s: float) -> None:
    venue = _venue(limit, window_s)
    # The day's history is a few hundred thousand tuples that live as long as
    # the venue: out of the cyclic GC, or every collection walks them (it made
    # a page of 1,000 trades cost 9 ms instead of 1).
    gc.collect()
    gc.freeze()
    async with trio.open_nursery() as nursery:
        _ws, rest_url = await nursery.start(venue.serve)
        print(json.dumps({"rest_url": rest_url}), flush=True)


def _count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM trades").fetchone()
    return int(row[0]) if row else 0


def _copy_reference(dsn: str, trades: list[Trade]) -> Phase:
    """Bare binary COPY of the same rows, rows built before the clock starts."""
    batches = [trade_rows(trades[i : i + PAGE_ROWS]) for i in range(0, len(trades), PAGE_ROWS)]
    # Partitions up front (the backfill's writer makes them too, outside the timing of COPY).
    CopyWriter(dsn).write(WriteBatch(trades=trades[:1]))
    with psycopg.connect(dsn) as conn:
        conn.execute("TRUNCATE trades")
        conn.commit()
        started = time.perf_counter()
        for rows in batches:
            with conn.cursor() as cur:
                register_encoded_dumpers(cur.adapters)
                with cur.copy(TRADES.copy_sql()) as copy:
                    copy.set_types(list(TRADES.types))
                    for row in rows:
                        copy.write_row(row)
            conn.commit()
        seconds = time.perf_counter() - started
    return Phase(len(trades), seconds, 0, 0)


def _day_trades() -> list[Trade]:
    venue = _venue(10**12, 60.0)
    start, end = _day_us()
    market = venue.market("BTCUSDT")
    now = time.time_ns()
    return [
        Trade("binance", "BTCUSDT", "trade", str(t.id), t.id, t.time_us * 1000, t.p, t.q, now,
              is_buyer_maker=t.buyer_maker)
        for t in market.trades_by_time(start, end - 1, 10**7)
    ]  # fmt: skip


def collect(dsn_arg: str) -> dict[str, Any]:
    with database_server(dsn_arg) as server:
        with fresh_database(server, "backfill_free") as dsn, _venue_process(10**12, 1.0) as url:
            free = trio.run(_backfill, dsn, url, 3600.0, 4, 1.0)
        with fresh_database(server, "backfill_copy") as dsn:
            copy = _copy_reference(dsn, _day_trades())
        with (
            fresh_database(server, "backfill_weights") as dsn,
            _venue_process(SCALED_LIMIT, SCALED_WINDOW_S) as url,
        ):
            weighted = trio.run(_backfill, dsn, url, 86400.0, 4, SCALED_WINDOW_S)
    per_window = SCALED_LIMIT // WEIGHT_TRADES * PAGE_ROWS
    theoretical_per_min = per_window * 60.0 / SCALED_WINDOW_S
    # Rows per minute of budget time: the last window's budget is spent at
    # once, so rows / elapsed would flatter a run that ends early in a window.
    measured_per_min = weighted.rows / (weighted.windows * SCALED_WINDOW_S) * 60.0
    fewest_windows = -(-weighted.rows // per_window)
    return {
        "rows": free.rows,
        "weights_off_rows_per_s": round(free.rows_per_s, 1),
        "weights_off_seconds": round(free.seconds, 2),
        "weights_off_requests": free.requests,
        "bare_copy_rows_per_s": round(copy.rows_per_s, 1),
        "bare_copy_batch_rows": PAGE_ROWS,
        "ratio_backfill_to_bare_copy": round(free.rows_per_s / copy.rows_per_s, 3),
        "weights_on_budget": f"{SCALED_LIMIT} per {SCALED_WINDOW_S:g} s",
        "weights_on_rows_per_min": round(measured_per_min),
        "weights_on_theoretical_rows_per_min": round(theoretical_per_min),
        "ratio_to_theoretical": round(measured_per_min / theoretical_per_min, 3),
        "weights_on_seconds": round(weighted.seconds, 2),
        "weights_on_windows": weighted.windows,
        "weights_on_fewest_windows": fewest_windows,
        "weights_on_requests": weighted.requests,
        "requests_over_budget": weighted.refused + free.refused,
    }


def format_report(f: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"backfill of one day of BTCUSDT trades from the fake Binance ({f['rows']:,} rows)",
            "weights off (24 hour-jobs, 4 workers):",
            f"  committed rows/s ........... {f['weights_off_rows_per_s']:,.0f} ({f['weights_off_requests']} requests, {f['weights_off_seconds']} s)",
            f"reference C, bare binary COPY of the same rows ({f['bare_copy_batch_rows']} per transaction):",
            f"  rows/s ..................... {f['bare_copy_rows_per_s']:,.0f}",
            f"  backfill / bare COPY ....... {f['ratio_backfill_to_bare_copy']}",
            f"realistic weights ({f['weights_on_budget']}, Binance's 6,000/min rate; one job):",
            f"  budget windows used ........ {f['weights_on_windows']} (fewest possible {f['weights_on_fewest_windows']}), {f['weights_on_seconds']} s",
            f"  committed rows/min ......... {f['weights_on_rows_per_min']:,} (rows / windows used)",
            f"  budget's theoretical max ... {f['weights_on_theoretical_rows_per_min']:,} (full pages of 1,000 at weight 25)",
            f"  ratio ...................... {f['ratio_to_theoretical']}",
            f"  requests over the budget ... {f['requests_over_budget']}",
        ]
    )


def run_backfill_bench(args: argparse.Namespace) -> int:
    from mdagent.logs import configure_logging

    configure_logging("warning", "console")
    try:
        figures = collect(getattr(args, "dsn", "embedded"))
    except BenchError as exc:
        print(f"mdagent bench --backfill: failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(figures) if getattr(args, "json", False) else format_report(figures))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-venue":
        trio.run(_serve_venue, int(sys.argv[2]), float(sys.argv[3]))
    else:
        raise SystemExit("usage: mdagent bench --backfill")
