"""The fetch_jobs queue on a real PostgreSQL: claims, leases, checkpoints with rows."""

from __future__ import annotations

import psycopg
import pytest

from mdagent.backfill.worker import WorkerSettings
from mdagent.db import jobs as jobs_sql
from mdagent.db.copy_writer import CopyWriter
from mdagent.db.jobs import FoundRange, JobProgress, PlannedJob
from mdagent.errors import LeaseLost
from mdagent.pipeline.batches import WriteBatch
from mdagent.records import Trade
from tests.agent_support import query

T0 = 1_700_000_000_000 * 1_000_000


def gap(conn: psycopg.Connection, channel: str = "trade", lo: int = 1, hi: int = 10) -> int:
    row = conn.execute(
        "INSERT INTO fetch_jobs (provider, symbol, channel, reason, from_seq, to_seq)"
        " VALUES ('binance', 'BTCUSDT', %s, 'sequence jump', %s, %s) RETURNING id",
        (channel, lo, hi),
    ).fetchone()
    assert row is not None
    return int(row[0])


def trade(seq: int) -> Trade:
    return Trade("binance", "BTCUSDT", "trade", str(seq), seq, T0 + seq * 1_000_000, "1.5", "2", T0)


def test_claims_skip_locked_and_expired_leases_move(fresh_db_dsn: str) -> None:
    with (
        psycopg.connect(fresh_db_dsn, autocommit=True) as a,
        psycopg.connect(fresh_db_dsn, autocommit=True) as b,
    ):
        first, second = gap(a), gap(a, lo=20, hi=30)
        # Worker A holds the row lock of its claim in an open transaction: B skips it.
        with a.transaction():
            job_a = jobs_sql.claim(a, "A", ["binance"], 60)
            job_b = jobs_sql.claim(b, "B", ["binance"], 60)
        assert job_a is not None and job_b is not None
        assert {job_a.id, job_b.id} == {first, second}
        assert jobs_sql.claim(b, "C", ["binance"], 60) is None  # both leased
        # A lease that expires (a dead worker) is claimed again, attempts counted.
        a.execute(
            "UPDATE fetch_jobs SET lease_until = now() - interval '1 s' WHERE id = %s", (job_a.id,)
        )
        again = jobs_sql.claim(b, "C", ["binance"], 60)
        assert again is not None and again.id == job_a.id and again.attempts == 2
        assert not jobs_sql.renew(a, job_a.id, "A", 60)  # A's lease is gone


def test_checkpoint_commits_with_rows_and_a_lost_lease_stores_nothing(fresh_db_dsn: str) -> None:
    dsn = fresh_db_dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        job_id = gap(conn, lo=1, hi=6)
        job = jobs_sql.claim(conn, "A", ["binance"], 60)
        assert job is not None and job.id == job_id
    writer = CopyWriter(dsn)
    try:
        page = WriteBatch(trades=[trade(1), trade(2)])
        page.jobs.append(JobProgress(job_id, "A", "id:3", False, 2, 1, 60))
        writer.write(page)
        assert query(
            dsn, "SELECT cursor, status, rows_written FROM fetch_jobs WHERE id = %s", job_id
        ) == [("id:3", "running", 2)]
        # The lease moves to B (A was presumed dead); A's next page must not land.
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("UPDATE fetch_jobs SET lease_until = now() - interval '1 s'")
            assert jobs_sql.claim(conn, "B", ["binance"], 60) is not None
        late = WriteBatch(trades=[trade(3), trade(4)])
        late.jobs.append(JobProgress(job_id, "A", "id:5", False, 2, 1, 60))
        with pytest.raises(LeaseLost):
            writer.write(late)
        assert query(dsn, "SELECT count(*) FROM trades") == [(2,)]
        # B resumes at the checkpoint; ids 3..4 stored, 5 proved absent, 6 read: done.
        last = WriteBatch(trades=[trade(2), trade(3), trade(4), trade(6)])  # 2 overlaps
        last.jobs.append(
            JobProgress(job_id, "B", None, True, 4, 1, 60, (FoundRange("absent", "skipped", 5, 5),))
        )
        result = writer.write(last)
        assert result.slow_path and result.trades_inserted == 3 and result.trades_duplicate == 1
    finally:
        writer.close()
    ids = [int(r[0]) for r in query(dsn, "SELECT trade_id FROM trades ORDER BY ts")]
    assert ids == [1, 2, 3, 4, 6]
    assert query(
        dsn,
        "SELECT status, cursor, lease_owner, rows_written FROM fetch_jobs WHERE id = %s",
        job_id,
    ) == [("done", None, None, 6)]
    assert query(
        dsn,
        "SELECT status, from_seq, to_seq, parent_id FROM fetch_jobs WHERE parent_id IS NOT NULL",
    ) == [("absent", 5, 5, job_id)]


def test_plan_is_idempotent_and_retries_failed_jobs(fresh_db_dsn: str) -> None:
    planned = [
        PlannedJob("binance", "BTCUSDT", "trade", T0, T0 + 99),
        PlannedJob("binance", "BTCUSDT", "trade", T0 + 100, T0 + 199),
    ]
    with psycopg.connect(fresh_db_dsn, autocommit=True) as conn:
        ids = jobs_sql.plan(conn, planned)
        conn.execute(
            "UPDATE fetch_jobs SET status = 'failed', attempts = 8, cursor = 'id:42' WHERE id = %s",
            (ids[1],),
        )
        assert jobs_sql.plan(conn, planned) == ids
        rows = conn.execute(
            "SELECT status, attempts, cursor FROM fetch_jobs ORDER BY id"
        ).fetchall()
    assert rows == [("pending", 0, None), ("pending", 0, "id:42")]  # checkpoint kept


def test_the_agent_retries_a_transient_failure_for_as_long_as_it_runs(fresh_db_dsn: str) -> None:
    """A venue away for longer than a few retries must not leave the gap unfilled for good.

    The agent's workers (WorkerSettings()) give a transiently failed job back
    however often it failed; `mdagent backfill` (max_attempts=8) reports it failed.
    """
    agent = WorkerSettings()
    command = WorkerSettings(max_attempts=8)
    with psycopg.connect(fresh_db_dsn, autocommit=True) as conn:
        for settings, expected in (
            (agent, ["pending"] * 20),
            (command, ["pending"] * 7 + ["failed"]),
        ):
            job_id = gap(conn)
            states = []
            for _ in expected:
                conn.execute("UPDATE fetch_jobs SET next_retry_at = NULL WHERE id = %s", (job_id,))
                job = jobs_sql.claim(conn, "W", ["binance"], 60, ids=[job_id])
                assert job is not None
                states.append(
                    jobs_sql.retry_later(
                        conn, job.id, "W", "HTTP 503 (5 attempts)", 0.0, settings.max_attempts
                    )
                )
            assert states == expected
