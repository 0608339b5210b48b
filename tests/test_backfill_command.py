"""``mdagent backfill`` as a user runs it: the console script in its own process,
the fake Binance (REST over real sockets, with faults) in this one, a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from mdagent.db.embedded import start_embedded
from mdagent.db.migrate import migrate
from mdagent.testing.binance.venue import BinanceFaults, FakeBinance
from tests.agent_support import query

DAY = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
DAY_US = int(DAY.timestamp()) * 1_000_000
NEXT_DAY_US = DAY_US + 86_400_000_000


def write_config(path: Path, dsn: str, rest_url: str) -> Path:
    path.write_text(
        f'[database]\ndsn = "{dsn}"\n'
        '[[sources]]\nprovider = "binance"\nsymbols = ["BTCUSDT"]\nchannels = ["trade"]\n'
        f'ws_url = "ws://127.0.0.1:9"\nrest_url = "{rest_url}"\n'
    )
    return path


def backfill_cmd(cfg: Path, kind: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "mdagent", "backfill", "--config", str(cfg),
        "--provider", "binance", "--symbol", "BTCUSDT", "--kind", kind,
        "--from", "2026-11-01", "--to", "2026-11-02", *extra,
    ]  # fmt: skip


async def run_cmd(cmd: list[str]) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)


def stored_ids(dsn: str) -> list[int]:
    rows = query(
        dsn,
        "SELECT trade_id::bigint FROM trades WHERE symbol = 'BTCUSDT' AND channel = 'trade'"
        " ORDER BY 1",
    )
    return [r[0] for r in rows]


async def started_until(cfg: Path, dsn: str, rows: int, stdout: int) -> trio.Process:
    """A trades backfill in its own process, once it has committed ``rows`` rows."""
    proc = await trio.lowlevel.open_process(
        backfill_cmd(cfg, "trades"), stdout=stdout, stderr=subprocess.DEVNULL
    )
    while len(await trio.to_thread.run_sync(stored_ids, dsn)) < rows:
        assert proc.poll() is None, "the backfill ended before it was stopped"
        await trio.sleep(0.05)
    return proc


def day_venue() -> FakeBinance:
    # A 2-second window of 300 weight: the trades need several windows, so the
    # budget is what paces the run; the fake counts any request over it.
    venue = FakeBinance(
        symbols=["BTCUSDT"], seed=7, rest_weight_limit=300, rest_weight_window_s=2.0
    )
    venue.prefill_history(DAY_US, NEXT_DAY_US, events_per_s=0.25)
    venue.stall(3600)
    return venue


async def test_day_of_trades_killed_and_resumed(fresh_db_dsn: str, tmp_path: Path) -> None:
    """Done-when 3 (trades): a day of trades with 429s, 500s and truncated pages;
    kill -9 mid-way, run again: complete, no duplicates, never over the budget,
    and the second run continues from the checkpoints."""
    dsn = fresh_db_dsn
    venue = day_venue()
    market = venue.market("BTCUSDT")
    expected = [t.id for t in market.trades_by_time(DAY_US, NEXT_DAY_US - 1, 10**6)]
    assert len(expected) > 30_000
    venue.set_faults(BinanceFaults(rest_force_429=2, rest_500_every=7, rest_truncate_every=11))
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            _ws, rest_url = await nursery.start(venue.serve)
            cfg = write_config(tmp_path / "config.toml", dsn, rest_url)
            first = await started_until(cfg, dsn, 8_000, subprocess.DEVNULL)
            try:
                first.send_signal(signal.SIGKILL)  # kill -9: no chance to release anything
            finally:
                first.kill()
                await first.wait()
            assert len(stored_ids(dsn)) < len(expected)
            second = await run_cmd(backfill_cmd(cfg, "trades"))
            nursery.cancel_scope.cancel()
    assert second.returncode == 0, second.stdout.decode() + second.stderr.decode()
    ids = stored_ids(dsn)
    assert ids == expected  # every trade of the day, once
    # Never over the budget: no request the budget paced was refused. The one
    # exception the budget cannot prevent: the rerun's first request (exchangeInfo)
    # may meet a window the killed run had filled, which no process can know
    # before the venue's first answer says so (README, Limitations).
    refused = venue.rest_refused_log
    assert all(path == "/api/v3/exchangeInfo" for path, *_ in refused), refused
    assert len(refused) <= 1, refused
    assert (
        venue.counters["rest_429s"] >= 2
        and venue.counters["rest_500s"] > 0
        and venue.counters["rest_truncated"] > 0
    )
    # Resumed, not restarted: both runs together read about what one run needs
    # (per hour job: a first-id lookup and its pages of 1000), plus at most the
    # pages in flight at the kill (4 workers) and the faulted requests again.
    per_job = [
        len(market.trades_by_time(lo, lo + 3_600_000_000 - 1, 10**6)) // 1000 + 2
        for lo in range(DAY_US, NEXT_DAY_US, 3_600_000_000)
    ]
    # Whole answers by path: each run reads exchangeInfo for the symbol lookup
    # and for the weight limit, and a fault can hit it (a guessed 2 failed CI).
    good = sum(n for path, n in venue.rest_served_by_path.items() if path != "/api/v3/exchangeInfo")
    assert sum(per_job) <= good <= sum(per_job) + 8
    states = query(dsn, "SELECT status, count(*) FROM fetch_jobs GROUP BY 1")
    assert states == [("done", 24)]


async def test_day_of_klines_with_faults(fresh_db_dsn: str, tmp_path: Path) -> None:
    """Done-when 3 (klines): a day of 1m klines through 429s and 500s: every bar the
    venue has, once, with its values."""
    dsn = fresh_db_dsn
    venue = day_venue()
    bars = venue.market("BTCUSDT").klines("1m", DAY_US, NEXT_DAY_US - 1, 10_000)
    venue.set_faults(BinanceFaults(rest_force_429=1, rest_500_every=2))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            _ws, rest_url = await nursery.start(venue.serve)
            cfg = write_config(tmp_path / "config.toml", dsn, rest_url)
            result = await run_cmd(backfill_cmd(cfg, "klines_1m"))
            nursery.cancel_scope.cancel()
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    # Not a terminal: plain progress lines, and the summary on stdout.
    assert "backfill: 2/2 jobs" in result.stderr.decode()
    assert "2/2 jobs done" in result.stdout.decode()
    rows = query(
        dsn,
        "SELECT (extract(epoch FROM ts) * 1000)::bigint, open::text, close::text, volume::text,"
        " final FROM candles WHERE symbol = 'BTCUSDT' AND interval = '1m' ORDER BY ts",
    )
    assert len(bars) > 1400
    assert [r[0] for r in rows] == [b.open_us // 1000 for b in bars]
    assert all(r[4] for r in rows)  # a past day: every bar final
    first = bars[0].rest_row(micros=False)
    assert rows[0][1:4] == (first[1], first[4], first[5])
    assert venue.counters["rest_weight_refused"] == 0


async def test_dry_run_prints_plan_and_estimate(fresh_db_dsn: str, tmp_path: Path) -> None:
    venue = day_venue()
    market = venue.market("BTCUSDT")
    count = len(market.trades_by_time(DAY_US, NEXT_DAY_US - 1, 10**6))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            _ws, rest_url = await nursery.start(venue.serve)
            cfg = write_config(tmp_path / "config.toml", fresh_db_dsn, rest_url)
            result = await run_cmd(backfill_cmd(cfg, "trades", "--dry-run"))
            nursery.cancel_scope.cancel()
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "24 job(s)" in out
    pages = -(-count // 1000)
    assert f"weight {pages * 25 + 24 * 4}" in out
    assert f"{count} rows in the range" in out
    assert query(fresh_db_dsn, "SELECT count(*) FROM fetch_jobs") == [(0,)]


async def test_bad_arguments_exit_2_with_one_line(tmp_path: Path) -> None:
    # No database and no venue behind it: bad arguments are refused before either.
    cfg = write_config(
        tmp_path / "config.toml", "postgresql://127.0.0.1:9/none", "http://127.0.0.1:9"
    )
    cases = [
        (["--kind", "quotes"], "binance keeps no quote history"),
        (["--kind", "klines_7m"], "unknown kind 'klines_7m'"),
        (["--kind", "trades", "--from", "2026-13-01"], "--from: '2026-13-01' is not a date"),
        (["--kind", "trades", "--to", "2026-10-01"], "must be after --from"),
        (["--kind", "trades", "--provider", "kraken"], "unknown provider 'kraken'"),
        # Found by QA: a traceback (nan/inf cannot become a job length) or,
        # for a symbol no config would accept, a day of jobs the venue refused.
        (["--kind", "trades", "--chunk-hours", "nan"], "--chunk-hours must be > 0"),
        (["--kind", "trades", "--chunk-hours", "inf"], "--chunk-hours must be > 0"),
        (["--kind", "trades", "--chunk-hours", "1e300"], "--chunk-hours must be > 0"),
        (["--kind", "trades", "--symbol", "BTC/USDT"], "--symbol 'BTC/USDT': only letters"),
        # 300 workers took 600 connections: the database refused everyone, the agent too.
        (["--kind", "trades", "--workers", "300"], "--workers must be 1 to 16"),
        (["--kind", "trades", "--provider", "polygon", "--symbol", "*"], "one ticker at a time"),
        # Polygon needs a key: without a polygon source there is none, and the
        # run asked the real venue unauthenticated (5 attempts, then exit 1).
        (
            ["--kind", "trades", "--provider", "polygon", "--symbol", "AAPL"],
            'no [[sources]] with provider = "polygon" in the config',
        ),
        (
            ["--kind", "trades", "--provider", "polygon", "--symbol", "AAPL", "--dry-run"],
            'no [[sources]] with provider = "polygon" in the config',
        ),
    ]
    for extra, message in cases:
        cmd = [
            sys.executable, "-m", "mdagent", "backfill", "--config", str(cfg),
            "--provider", "binance", "--symbol", "BTCUSDT",
            "--from", "2026-11-01", "--to", "2026-11-02", *extra,
        ]  # fmt: skip
        result = await run_cmd(cmd)
        err = result.stderr.decode()
        assert result.returncode == 2, (extra, err)
        assert message in err and "Traceback" not in err, (extra, err)
        assert len(err.strip().splitlines()) == 1, err


async def test_sigterm_stops_cleanly_and_a_rerun_continues(
    fresh_db_dsn: str, tmp_path: Path
) -> None:
    """SIGTERM (or Ctrl-C): the workers stop, each job keeps its committed checkpoint and
    is handed back at once; exit 1 saying how to continue; the rerun completes."""
    dsn = fresh_db_dsn
    venue = day_venue()
    expected = [
        t.id for t in venue.market("BTCUSDT").trades_by_time(DAY_US, NEXT_DAY_US - 1, 10**6)
    ]
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            _ws, rest_url = await nursery.start(venue.serve)
            cfg = write_config(tmp_path / "config.toml", dsn, rest_url)
            first = await started_until(cfg, dsn, 5_000, subprocess.PIPE)
            first.send_signal(signal.SIGTERM)
            assert first.stdout is not None
            said = b""
            async for chunk in first.stdout:
                said += chunk
            assert await first.wait() == 1
            assert b"interrupted by SIGTERM: run the same command again to continue" in said
            running = query(dsn, "SELECT count(*) FROM fetch_jobs WHERE status = 'running'")
            assert running == [(0,)]  # handed back, not left to a lease
            second = await run_cmd(backfill_cmd(cfg, "trades"))
            nursery.cancel_scope.cancel()
    assert second.returncode == 0, second.stdout.decode() + second.stderr.decode()
    assert stored_ids(dsn) == expected


def iso(us: float) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).isoformat()


async def test_range_into_the_future_ends_at_now(fresh_db_dsn: str, tmp_path: Path) -> None:
    """Found by QA: ``--to`` later than now made jobs over time that had not
    happened yet, which ended ``done`` with nothing (or with what existed so far),
    so running the command again later never read the rest. The plan ends at now
    and says so; no job reaches past the moment the command ran."""
    now_us = time.time_ns() // 1000
    start_us = now_us - 20 * 60_000_000
    venue = FakeBinance(symbols=["BTCUSDT"], seed=3)
    venue.prefill_history(start_us, now_us, events_per_s=2)
    venue.stall(3600)
    expected = [t.id for t in venue.market("BTCUSDT").trades_by_time(start_us, now_us, 10**6)]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            _ws, rest_url = await nursery.start(venue.serve)
            cfg = write_config(tmp_path / "config.toml", fresh_db_dsn, rest_url)
            cmd = backfill_cmd(cfg, "trades", "--from", iso(start_us), "--to", iso(now_us + 7200e6))
            result = await run_cmd(cmd)
            nursery.cancel_scope.cancel()
    ended_ns = time.time_ns()
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    ends = query(fresh_db_dsn, "SELECT to_ts_ns FROM fetch_jobs")
    assert ends and all(end < ended_ns for (end,) in ends), ends
    assert stored_ids(fresh_db_dsn) == expected
    assert "is in the future: backfilling up to now" in result.stderr.decode()
    # Nothing has happened yet after --from: refused as an argument.
    late = await run_cmd(
        backfill_cmd(cfg, "trades", "--from", iso(now_us + 3600e6), "--to", iso(now_us + 7200e6))
    )
    assert late.returncode == 2 and "is in the future" in late.stderr.decode()


async def test_database_away_mid_backfill_then_back(tmp_path: Path) -> None:
    """Found by QA: the database stopping under ``mdagent backfill`` (workers
    retrying) made its progress poll raise: a traceback and exit 1. It waits for
    the database like the workers do, and the run completes once it is back."""
    server = start_embedded(tmp_path / "private-db")
    dsn = server.get_uri()
    migrate(dsn)
    venue = day_venue()
    expected = [
        t.id for t in venue.market("BTCUSDT").trades_by_time(DAY_US, NEXT_DAY_US - 1, 10**6)
    ]
    venue.set_faults(BinanceFaults(rest_delay_s=0.05))
    try:
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                _ws, rest_url = await nursery.start(venue.serve)
                cfg = write_config(tmp_path / "config.toml", dsn, rest_url)
                proc = await started_until(cfg, dsn, 3_000, subprocess.PIPE)
                await trio.to_thread.run_sync(server.stop, "immediate")  # as a crash would
                await trio.sleep(4)
                assert proc.poll() is None, "the backfill gave up while the database was away"
                await trio.to_thread.run_sync(server.start)
                assert proc.stdout is not None
                out = b""
                async for chunk in proc.stdout:
                    out += chunk
                await proc.wait()
                nursery.cancel_scope.cancel()
        assert proc.returncode == 0, out.decode()
        assert stored_ids(dsn) == expected
    finally:
        server.stop("fast")


async def test_unknown_symbol_is_refused_before_any_job(fresh_db_dsn: str, tmp_path: Path) -> None:
    """Found by QA: a symbol Binance does not know made a job per hour, each
    failed with -1121 and listed (24 lines, exit 1), left in fetch_jobs for ever.
    One line and exit 2 now, and no job is stored."""
    venue = day_venue()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            _ws, rest_url = await nursery.start(venue.serve)
            cfg = write_config(tmp_path / "config.toml", fresh_db_dsn, rest_url)
            cmd = backfill_cmd(cfg, "trades", "--symbol", "BTCUSTD")
            result = await run_cmd(cmd)
            dry = await run_cmd([*cmd, "--dry-run"])
            nursery.cancel_scope.cancel()
    for run in (result, dry):
        err = run.stderr.decode()
        assert run.returncode == 2, run.stdout.decode() + err
        assert "binance does not list 'BTCUSTD'" in err and len(err.strip().splitlines()) == 1
    assert query(fresh_db_dsn, "SELECT count(*) FROM fetch_jobs") == [(0,)]


@pytest.mark.parametrize("dry_run", [False, True])
async def test_ctrl_c_during_a_long_retry_after_stops_the_command(
    fresh_db_dsn: str, tmp_path: Path, dry_run: bool
) -> None:
    """A 429 before the first job (the venue's limits, the symbol lookup) with
    a Retry-After of days: Ctrl-C was recorded but nothing looked at it until
    the job loop, so the command sat out the pause (3 days; for ever before
    the cap). Now it stops at once: exit 1, nothing stored, a rerun continues."""
    dsn = fresh_db_dsn
    venue = day_venue()
    venue.set_faults(BinanceFaults(rest_force_429=1, rest_retry_after_s=10**12))
    extra = ("--dry-run",) if dry_run else ()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            _ws, rest_url = await nursery.start(venue.serve)
            cfg = write_config(tmp_path / "config.toml", dsn, rest_url)
            proc = await trio.lowlevel.open_process(
                backfill_cmd(cfg, "klines_1m", *extra),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            try:
                while venue.stats()["rest_429s"] < 1:  # paused on the 429 now
                    assert proc.poll() is None, "the backfill ended before the 429"
                    await trio.sleep(0.05)
                proc.send_signal(signal.SIGINT)
                assert proc.stdout is not None
                said = b""
                async for chunk in proc.stdout:
                    said += chunk
                assert await proc.wait() == 1, said
            finally:
                if proc.poll() is None:
                    proc.kill()
            nursery.cancel_scope.cancel()
    assert b"interrupted by SIGINT" in said, said
    assert query(dsn, "SELECT count(*) FROM fetch_jobs") == [(0,)]
