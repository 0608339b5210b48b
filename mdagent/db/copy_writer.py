"""The transactional writer: one batch, one transaction.

The rows come from :mod:`mdagent.db.prepare` (pure, done ahead in another
thread); this module only moves them into the database and decides what a
failure means.

It runs in a worker thread (``trio.to_thread.run_sync``): psycopg's async
connection is asyncio-only, and libpq releases the GIL while it waits. The
async writer task hands it one ``WriteBatch`` at a time.

Everything in a batch commits together or not at all: trades, quotes, candles,
raw frames, gaps (as ``fetch_jobs``), dead letters and the ``stream_offsets``
upsert. So after a crash the offsets never claim rows that are not stored.

Two paths, because conflicts are rare but must never lose a batch:

- fast: binary COPY straight into the partitioned tables. The normalizer
  already drops records at or below the committed offset, so a stored row
  coming back is unusual (backfill overlap, a second agent).
- slow: when the fast path meets a ``UniqueViolation`` (or a row the server
  refuses), the transaction is rolled back and the batch redone: trades and
  quotes are COPYed into per-connection temp tables, then
  ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``. Each COPY runs under a
  savepoint; if the server refuses a value, the rows are bisected until the
  bad ones are found, and those go to ``dead_letter`` with the reason.

Candles are never COPYed: their upsert needs ON CONFLICT, so each bar is
one ``INSERT ... ON CONFLICT DO UPDATE``, all of a batch's in one pipeline.

Retrying after a failure is safe. A failure before COMMIT leaves nothing
behind. If the connection dies *during* COMMIT the outcome is unknown; the
writer kept the transaction id and asks the server (``pg_xact_status``) on
the next call. Committed and the same batch: the stored result is returned
and nothing is written twice. Aborted: the batch is written normally. Not
known (or a different batch): the slow path, where every keyed row is
idempotent and offsets only move forward (GREATEST).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import psycopg
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus

from mdagent.db import offsets as offsets_sql
from mdagent.db.connection import connect
from mdagent.db.copy_rows import (
    CANDLE_UPSERT,
    DEAD,
    GAP_INSERT,
    QUOTES,
    RAW,
    TRADES,
    CopySpec,
    Row,
    copy_binary_rows,
    dead_rows,
    register_encoded_dumpers,
)
from mdagent.db.dsn import masked_dsn
from mdagent.db.jobs import FOUND_RANGE_INSERT, PROGRESS_UPDATE, JobProgress
from mdagent.db.offsets import Offset, OffsetKey
from mdagent.db.partitions import PartitionCache
from mdagent.db.prepare import PreparedBatch, TableRows, as_dead_letter, prepare_batch
from mdagent.errors import DatabaseUnavailable, LeaseLost
from mdagent.pipeline.batches import WriteBatch
from mdagent.records import DeadLetter

# Errors that are the input's fault, raised while rows are written: by the
# server (bad value, NULL where required, a CHECK) or by psycopg's dumpers
# (an int beyond int64, a lone surrogate, a value of the wrong Python type).
_INPUT_FAULTS: tuple[type[BaseException], ...] = (
    pg_errors.DataError,
    pg_errors.NotNullViolation,
    pg_errors.CheckViolation,
    OverflowError,
    UnicodeEncodeError,
    TypeError,
)
# What sends the fast path to the slow path.
_REDO_CAREFULLY: tuple[type[BaseException], ...] = (pg_errors.UniqueViolation, *_INPUT_FAULTS)

_BEGIN_AND_XID = "BEGIN; SELECT pg_current_xact_id()::text"

# Per-session staging tables of the slow path (ON CONFLICT DO NOTHING).
_STAGE = {spec.table: f"mdagent_stage_{spec.table}" for spec in (TRADES, QUOTES)}


@attrs.frozen
class WriteResult:
    """What one ``write`` stored. Duplicates and rejects are counted, never silent."""

    trades_inserted: int = 0
    trades_duplicate: int = 0  # in the batch twice, or already stored
    quotes_inserted: int = 0
    quotes_duplicate: int = 0
    candles_written: int = 0  # inserted or updated
    candles_ignored: int = 0  # bar already final, an older re-send, or superseded in the batch
    raw_inserted: int = 0
    gaps_inserted: int = 0  # fetch_jobs rows
    offsets_upserted: int = 0
    dead_letters: int = 0  # dead_letter rows, including ``rejected``
    rejected: int = 0  # records the database (or a row builder) refused: now dead letters
    slow_path: bool = False  # temp tables + ON CONFLICT DO NOTHING were used
    recovered: bool = False  # an earlier attempt whose COMMIT looked failed had committed
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return (
            self.trades_inserted
            + self.quotes_inserted
            + self.candles_written
            + self.raw_inserted
            + self.gaps_inserted
            + self.dead_letters
        )


@attrs.frozen
class _PendingCommit:
    """A COMMIT whose answer was lost with the connection."""

    batch: WriteBatch
    rows: int
    xid: str
    backend_pid: int
    result: WriteResult


class _Verdict(enum.Enum):
    COMMITTED = "committed"
    ABORTED = "aborted"
    UNKNOWN = "unknown"


class CopyWriter:
    """Writes batches with COPY over one sync connection, opened lazily.

    Not thread-safe: one writer per worker thread. Every libpq failure comes
    out as ``DatabaseUnavailable``; the connection is then dropped and the
    next call reconnects, so the caller keeps the batch and calls ``write``
    again with the same batch.
    """

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: psycopg.Connection | None = None
        self._partitions = PartitionCache()
        self._pending: _PendingCommit | None = None

    # -- public -----------------------------------------------------------

    def write(self, batch: WriteBatch, prepared: PreparedBatch | None = None) -> WriteResult:
        """Commit ``batch``; ``prepared`` is ``prepare_batch(batch)`` if the caller made it.

        Preparing is pure Python and the slower half of a write: the async
        writer prepares the next batch in another thread while this one waits
        on the server. A retry passes the same ``prepared`` again.
        """
        started = time.perf_counter()
        if prepared is None:
            prepared = prepare_batch(batch)
        try:
            result = self._write(batch, prepared)
        except psycopg.OperationalError as exc:
            self._drop_connection()
            raise DatabaseUnavailable(
                f"writing a batch of {len(batch)} rows failed: {exc}"
            ) from exc
        return attrs.evolve(result, seconds=time.perf_counter() - started)

    def load_offsets(self) -> dict[OffsetKey, Offset]:
        try:
            conn = self._connection()
            found = offsets_sql.load_offsets(conn)
            conn.rollback()  # end the read-only transaction: no idle-in-transaction session
        except psycopg.OperationalError as exc:
            self._drop_connection()
            raise DatabaseUnavailable(f"loading stream offsets failed: {exc}") from exc
        return found

    def ping(self) -> None:
        """One round trip (``SELECT 1``), for readiness; raises ``DatabaseUnavailable``."""
        try:
            conn = self._connection()
            conn.execute("SELECT 1")
            conn.rollback()
        except psycopg.OperationalError as exc:
            self._drop_connection()
            raise DatabaseUnavailable(f"database ping failed: {exc}") from exc

    def close(self) -> None:
        self._drop_connection()

    # -- connection -------------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        # Autocommit: the writer opens each transaction itself, with the
        # statement that also asks for its id (one round trip, see _transaction).
        conn = connect(self._dsn, autocommit=True)
        try:
            # Staging tables live as long as the session; ON COMMIT DELETE ROWS
            # empties them at each commit without the catalog churn of
            # creating (ON COMMIT DROP) a table per batch.
            for table, stage in _STAGE.items():
                conn.execute(f"CREATE TEMP TABLE {stage} (LIKE {table}) ON COMMIT DELETE ROWS")
            conn.commit()
        except psycopg.Error:
            conn.close()
            raise
        self._conn = conn
        self._partitions.forget()  # the cache is per connection lifetime
        return conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self._partitions.forget()
        if conn is not None:
            conn.close()

    def _abandon(self, conn: psycopg.Connection) -> None:
        """Roll back after a failure; a partition created in it may be gone."""
        self._partitions.forget()
        if not conn.closed and not conn.broken:
            conn.rollback()

    # -- the write --------------------------------------------------------

    def _write(self, batch: WriteBatch, prepared: PreparedBatch) -> WriteResult:
        careful = False
        if self._pending is not None:
            conn = self._connection()
            verdict = self._resolve_pending(conn)
            if verdict is _Verdict.COMMITTED:
                pending = self._pending
                self._pending = None
                assert pending is not None
                if pending.batch is batch and pending.rows == len(batch):
                    return attrs.evolve(pending.result, recovered=True)
                careful = True  # another batch: it may overlap what was committed
            else:
                careful = verdict is _Verdict.UNKNOWN
                self._pending = None
        if prepared.is_empty():
            return WriteResult()
        conn = self._connection()
        self._ensure_partitions(conn, prepared.days)
        if not careful:
            try:
                return self._transaction(conn, batch, prepared, careful=False)
            except _REDO_CAREFULLY:
                pass  # a stored duplicate or a refused value: redo the batch the slow way
        return self._transaction(conn, batch, prepared, careful=True)

    def _ensure_partitions(self, conn: psycopg.Connection, days: dict[str, set[Any]]) -> None:
        # In a transaction of its own, committed before the data: a partition
        # then survives a rollback of the batch, and the batch's transaction
        # holds no DDL locks while it COPYs.
        done = False
        try:
            for table, table_days in days.items():
                self._partitions.ensure(conn, table, sorted(table_days))
            if conn.info.transaction_status != TransactionStatus.IDLE:
                conn.commit()
            done = True
        finally:
            if not done:
                self._abandon(conn)

    def _transaction(
        self, conn: psycopg.Connection, batch: WriteBatch, prepared: PreparedBatch, *, careful: bool
    ) -> WriteResult:
        committed = False
        try:
            # Opens the transaction (savepoints need one) and gets the id needed
            # to learn the outcome of a lost COMMIT, in one round trip: each one
            # costs the writer thread a wait for the GIL on the way back.
            cur = conn.execute(_BEGIN_AND_XID)
            cur.nextset()  # past BEGIN's result
            row = cur.fetchone()
            assert row is not None
            xid = str(row[0])
            stager = _Stager(conn, careful)
            if stager.can_finish_in_one_round_trip(prepared):
                result = stager.stage(
                    prepared, finish=lambda staged: self._commit(conn, batch, xid, staged)
                )
            else:
                result = stager.stage(prepared)
                self._commit(conn, batch, xid, result)
            committed = True
            return result
        finally:
            if not committed:
                self._abandon(conn)

    def _commit(
        self, conn: psycopg.Connection, batch: WriteBatch, xid: str, result: WriteResult
    ) -> None:
        self._pending = _PendingCommit(batch, len(batch), xid, conn.info.backend_pid, result)
        try:
            conn.commit()
        except psycopg.Error as exc:
            if not isinstance(exc, psycopg.OperationalError):
                self._pending = None  # the server answered: it rolled back
            raise  # OperationalError: outcome unknown, ``_pending`` tells the next call
        self._pending = None

    def _resolve_pending(self, conn: psycopg.Connection) -> _Verdict:
        pending = self._pending
        assert pending is not None
        status = _xact_status(conn, pending.xid)
        if status == "in progress":
            # The old session still holds the transaction (the server has not
            # noticed its client is gone): end it and wait for it to finish.
            conn.execute("SELECT pg_terminate_backend(%s, 5000)", (pending.backend_pid,))
            conn.rollback()
            status = _xact_status(conn, pending.xid)
            if status == "in progress":
                raise DatabaseUnavailable(
                    f"the outcome of the previous commit on {masked_dsn(self._dsn)} is not known yet"
                )
        if status == "committed":
            return _Verdict.COMMITTED
        if status == "aborted":
            return _Verdict.ABORTED
        return _Verdict.UNKNOWN  # NULL: the transaction id is too old to tell


def _xact_status(conn: psycopg.Connection, xid: str) -> str | None:
    row = conn.execute("SELECT pg_xact_status(%s::xid8)", (xid,)).fetchone()
    conn.rollback()
    return None if row is None else row[0]


class _Stager:
    """Writes every table of one prepared batch inside the open transaction."""

    def __init__(self, conn: psycopg.Connection, careful: bool) -> None:
        self._conn = conn
        self._cur = conn.cursor()
        # Rows carry numeric and int4[] values pre-encoded (copy_rows).
        register_encoded_dumpers(self._cur.adapters)
        self._careful = careful

    def can_finish_in_one_round_trip(self, p: PreparedBatch) -> bool:
        """True when everything after the COPYs can go in one pipeline with the COMMIT.

        That is the fast path of a stream batch: candles, gaps and offsets
        only. Raw frames and dead letters are COPYs (not allowed in a
        pipeline), a job checkpoint must be checked before the COMMIT
        (``LeaseLost``), and rejects go to ``dead_letter``.
        """
        return not (self._careful or p.raw.rows or p.dead.rows or p.jobs or p.rejects)

    def stage(
        self, p: PreparedBatch, finish: Callable[[WriteResult], None] | None = None
    ) -> WriteResult:
        """Write every table of ``p``; with ``finish``, also commit, in the same pipeline.

        ``finish(result)`` must send the COMMIT (``CopyWriter._commit``); it gets
        the result as staged, with every candle sent counted as written (the
        exact count arrives with the pipeline's answer, and the result
        returned carries it). Only when :meth:`can_finish_in_one_round_trip`.
        """
        rejects = list(p.rejects)
        with self._cur:
            t_ins, t_dup = self._keyed(TRADES, p.trades, rejects)
            q_ins, q_dup = self._keyed(QUOTES, p.quotes, rejects)
            if finish is not None:
                return self._finish_in_one_round_trip(p, t_ins, q_ins, finish)
            c_staged, c_written = self._candles(p.candles, rejects)
            raw = self._write(self._copier(RAW), p.raw, "trades_raw", rejects)
            gaps = self._write(self._many(GAP_INSERT), p.gaps, "fetch_jobs", rejects)
            offs = self._write(self._many(offsets_sql.UPSERT), p.offsets, "stream_offsets", rejects)
            dead = self._dead_letters(p.dead, rejects)
            self._job_progress(p.jobs)
        return WriteResult(
            trades_inserted=t_ins,
            trades_duplicate=t_dup + p.trade_dups,
            quotes_inserted=q_ins,
            quotes_duplicate=q_dup + p.quote_dups,
            candles_written=c_written,
            candles_ignored=c_staged - c_written + p.candles_superseded,
            raw_inserted=raw,
            gaps_inserted=gaps,
            offsets_upserted=offs,
            dead_letters=dead,
            rejected=len(rejects),
            slow_path=self._careful,
        )

    def _finish_in_one_round_trip(
        self, p: PreparedBatch, trades: int, quotes: int, finish: Callable[[WriteResult], None]
    ) -> WriteResult:
        """Candles, gaps, offsets and the COMMIT in one pipeline: one wait for the
        server instead of three (each wait also costs this thread a wait for
        the GIL on the way back). An error in any statement aborts the
        transaction and raises from ``finish``, as it would have one by one."""
        staged = WriteResult(
            trades_inserted=trades,
            trades_duplicate=p.trade_dups,
            quotes_inserted=quotes,
            quotes_duplicate=p.quote_dups,
            candles_written=len(p.candles.rows),
            candles_ignored=p.candles_superseded,
            gaps_inserted=len(p.gaps.rows),
            offsets_upserted=len(p.offsets.rows),
        )
        candles = self._conn.cursor()
        register_encoded_dumpers(candles.adapters)
        with candles, self._conn.pipeline():
            if p.candles.rows:
                candles.executemany(CANDLE_UPSERT, p.candles.rows)
            if p.gaps.rows:
                self._cur.executemany(GAP_INSERT, p.gaps.rows)
            if p.offsets.rows:
                self._cur.executemany(offsets_sql.UPSERT, p.offsets.rows)
            finish(staged)  # COMMIT, and the pipeline's sync
            written = candles.rowcount if p.candles.rows else 0
        return attrs.evolve(
            staged,
            candles_written=written,
            candles_ignored=len(p.candles.rows) - written + p.candles_superseded,
        )

    def _keyed(
        self, spec: CopySpec, table: TableRows, rejects: list[DeadLetter]
    ) -> tuple[int, int]:
        """(inserted, duplicates against stored rows) for trades or quotes."""
        if not self._careful:
            if table.payload is not None:
                with self._cur.copy(spec.copy_sql()) as copy:
                    copy.write(table.payload)
                return len(table.records), 0  # the rows themselves were released
            return self._write(self._copier(spec), table, spec.table, rejects), 0
        staged = self._write(self._copier(spec, _STAGE[spec.table]), table, spec.table, rejects)
        if not staged:
            return 0, 0
        inserted = self._execute(
            f"INSERT INTO {spec.table} ({spec.column_list}) SELECT {spec.column_list}"
            f" FROM {_STAGE[spec.table]} ON CONFLICT DO NOTHING"
        )
        return inserted, staged - inserted

    def _job_progress(self, jobs: Sequence[JobProgress]) -> None:
        """Backfill checkpoints, last: the rows of their pages are staged by now."""
        for job in jobs:
            self._cur.execute(PROGRESS_UPDATE, job.params())
            if self._cur.rowcount != 1:
                raise LeaseLost(f"job {job.job_id} is no longer leased by {job.owner}")
            for found in job.found:
                self._cur.execute(
                    FOUND_RANGE_INSERT,
                    {
                        "id": job.job_id,
                        "status": found.status,
                        "reason": found.reason,
                        "from_seq": found.from_seq,
                        "to_seq": found.to_seq,
                    },
                )

    def _dead_letters(self, table: TableRows, rejects: list[DeadLetter]) -> int:
        rows = table.rows + dead_rows(rejects)
        records = table.records + rejects
        write = self._copier(DEAD)
        refused: list[DeadLetter] = []
        stored = self._write(write, TableRows(rows, records), "dead_letter", refused)
        if refused:
            # A dead letter the server refuses (a NUL byte, a lone surrogate)
            # is kept as the escaped JSON of itself, which always fits.
            write(dead_rows(refused))
            rejects.extend(refused)
        return stored + len(refused)

    def _candles(self, table: TableRows, rejects: list[DeadLetter]) -> tuple[int, int]:
        """(bars sent, bars inserted or updated): the upsert skips final and older bars."""
        written = 0

        def upsert(rows: Sequence[Row]) -> None:
            nonlocal written
            self._cur.executemany(CANDLE_UPSERT, rows)
            written += self._cur.rowcount  # summed over the statements

        sent = self._write(upsert, table, "candles", rejects)
        return sent, written

    def _execute(self, sql: str) -> int:
        self._cur.execute(sql)
        return self._cur.rowcount

    def _copier(self, spec: CopySpec, target: str | None = None) -> Callable[[Sequence[Row]], None]:
        cur, sql, types = self._cur, spec.copy_sql(target), spec.types

        def write(rows: Sequence[Row]) -> None:
            with cur.copy(sql) as copy:
                copy.set_types(list(types))
                copy_binary_rows(copy, rows)

        return write

    def _many(self, sql: str) -> Callable[[Sequence[Row]], None]:
        cur = self._cur

        def write(rows: Sequence[Row]) -> None:
            cur.executemany(sql, rows)

        return write

    def _write(
        self,
        write: Callable[[Sequence[Row]], None],
        table: TableRows,
        name: str,
        rejects: list[DeadLetter],
    ) -> int:
        """Write all rows; on the slow path bisect around refused ones. Returns rows written."""
        if not table.rows:
            return 0
        if not self._careful:
            write(table.rows)
            return len(table.rows)
        return self._bisect(write, table.rows, table.records, name, rejects)

    def _bisect(
        self,
        write: Callable[[Sequence[Row]], None],
        rows: Sequence[Row],
        records: Sequence[Any],
        name: str,
        rejects: list[DeadLetter],
    ) -> int:
        try:
            with self._conn.transaction():  # a savepoint: only this chunk is undone
                write(rows)
            return len(rows)
        except _INPUT_FAULTS as exc:
            if len(rows) == 1:
                rejects.append(as_dead_letter(records[0], name, exc))
                return 0
        # ~2 log2(n) extra COPYs for one bad row; refused rows are rare.
        mid = len(rows) // 2
        return self._bisect(write, rows[:mid], records[:mid], name, rejects) + self._bisect(
            write, rows[mid:], records[mid:], name, rejects
        )
