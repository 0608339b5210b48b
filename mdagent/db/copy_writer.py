"""The synchronous COPY writer: one batch, one transaction.

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

Candles always take the temp-table route: their upsert needs ON CONFLICT.

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
from collections.abc import Callable, Iterable, Sequence
from operator import attrgetter
from typing import Any

import attrs
import msgspec
import psycopg
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus

from mdagent.db import offsets as offsets_sql
from mdagent.db.connection import connect
from mdagent.db.copy_rows import (
    CANDLES,
    DEAD,
    GAP_INSERT,
    NS_PER_MS,
    QUOTE_INTS,
    QUOTES,
    RAW,
    TRADE_INTS,
    TRADES,
    CopySpec,
    IntField,
    Row,
    build_rows,
    candle_rows,
    days_of,
    dead_rows,
    gap_rows,
    quote_rows,
    raw_rows,
    register_encoded_dumpers,
    trade_rows,
)
from mdagent.db.dsn import masked_dsn
from mdagent.db.offsets import Offset, OffsetKey
from mdagent.db.partitions import PartitionCache
from mdagent.errors import DatabaseUnavailable
from mdagent.records import Candle, DeadLetter, Gap, Quote, RawFrame, Record, Trade
from mdagent.text import storable_text

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

_STAGE = {spec.table: f"mdagent_stage_{spec.table}" for spec in (TRADES, QUOTES, CANDLES)}

_CANDLE_UPSERT = (
    f"INSERT INTO candles AS c ({CANDLES.column_list})"
    f" SELECT {CANDLES.column_list} FROM {_STAGE['candles']}"
    " ON CONFLICT (provider, symbol, interval, ts) DO UPDATE SET"
    + ",".join(
        f" {col} = excluded.{col}"
        for col in CANDLES.columns
        if col not in ("provider", "symbol", "interval", "ts")
    )
    # A final bar is final; an older re-send never overwrites a newer one.
    + " WHERE NOT c.final AND excluded.event_ts_ns >= c.event_ts_ns"
)


@attrs.define
class WriteBatch:
    """What the async writer accumulates between two writes."""

    trades: list[Trade] = attrs.Factory(list)
    quotes: list[Quote] = attrs.Factory(list)
    candles: list[Candle] = attrs.Factory(list)
    raw: list[RawFrame] = attrs.Factory(list)
    dead: list[DeadLetter] = attrs.Factory(list)
    gaps: list[Gap] = attrs.Factory(list)
    # (provider, symbol, channel) -> (last_seq, last_ts_ns) once this batch is stored.
    offsets: dict[OffsetKey, Offset] = attrs.Factory(dict)

    def add(self, records: Iterable[Record]) -> None:
        """Sort records by kind; market records also advance the batch's offsets."""
        offsets = self.offsets
        advance = offsets_sql.advance
        for r in records:
            if type(r) is Trade:
                self.trades.append(r)
                advance(offsets, (r.provider, r.symbol, r.channel), r.seq, r.ts_ns)
            elif type(r) is Quote:
                self.quotes.append(r)
                advance(offsets, (r.provider, r.symbol, r.channel), r.seq, r.ts_ns)
            elif type(r) is Candle:
                self.candles.append(r)
                # Only a final bar counts as received: the open bar will be
                # re-sent and must not be dropped as "already stored".
                if r.final:
                    advance(offsets, (r.provider, r.symbol, r.channel), None, r.open_ts_ns)
            elif type(r) is RawFrame:
                self.raw.append(r)
            elif type(r) is DeadLetter:
                self.dead.append(r)
            elif type(r) is Gap:
                self.gaps.append(r)
            # StreamControl is about the connection, not data: nothing to store.

    def merge(self, other: WriteBatch) -> None:
        """Append ``other`` (a later batch of the same pipeline) to this one."""
        self.trades.extend(other.trades)
        self.quotes.extend(other.quotes)
        self.candles.extend(other.candles)
        self.raw.extend(other.raw)
        self.dead.extend(other.dead)
        self.gaps.extend(other.gaps)
        for key, (seq, ts_ns) in other.offsets.items():
            offsets_sql.advance(self.offsets, key, seq, ts_ns)

    def __len__(self) -> int:
        return (
            len(self.trades)
            + len(self.quotes)
            + len(self.candles)
            + len(self.raw)
            + len(self.dead)
            + len(self.gaps)
        )


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


@attrs.define
class _Rows:
    """Rows of one table and the records they came from (to name a refused one)."""

    rows: list[Row]
    records: list[Any]


@attrs.define
class PreparedBatch:
    """A batch turned into rows: pure Python, no database (see :func:`prepare_batch`)."""

    trades: _Rows
    quotes: _Rows
    candles: _Rows
    raw: _Rows
    gaps: _Rows
    offsets: _Rows
    dead: _Rows
    trade_dups: int
    quote_dups: int
    candles_superseded: int
    rejects: list[DeadLetter]  # records no row could be built from
    days: dict[str, set[Any]]  # table -> days with rows

    def is_empty(self) -> bool:
        return (
            not any(
                t.rows
                for t in (
                    self.trades,
                    self.quotes,
                    self.candles,
                    self.raw,
                    self.gaps,
                    self.offsets,
                    self.dead,
                )
            )
            and not self.rejects
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
            result = _Stager(conn, careful).stage(prepared)
            self._commit(conn, batch, str(row[0]), result)
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

    def stage(self, p: PreparedBatch) -> WriteResult:
        rejects = list(p.rejects)
        with self._cur:
            t_ins, t_dup = self._keyed(TRADES, p.trades, rejects)
            q_ins, q_dup = self._keyed(QUOTES, p.quotes, rejects)
            c_staged = self._write(
                self._copier(CANDLES, _STAGE["candles"]), p.candles, "candles", rejects
            )
            c_written = self._execute(_CANDLE_UPSERT) if c_staged else 0
            raw = self._write(self._copier(RAW), p.raw, "trades_raw", rejects)
            gaps = self._write(self._many(GAP_INSERT), p.gaps, "fetch_jobs", rejects)
            offs = self._write(self._many(offsets_sql.UPSERT), p.offsets, "stream_offsets", rejects)
            dead = self._dead_letters(p.dead, rejects)
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

    def _keyed(self, spec: CopySpec, table: _Rows, rejects: list[DeadLetter]) -> tuple[int, int]:
        """(inserted, duplicates against stored rows) for trades or quotes."""
        if not self._careful:
            return self._write(self._copier(spec), table, spec.table, rejects), 0
        staged = self._write(self._copier(spec, _STAGE[spec.table]), table, spec.table, rejects)
        if not staged:
            return 0, 0
        inserted = self._execute(
            f"INSERT INTO {spec.table} ({spec.column_list}) SELECT {spec.column_list}"
            f" FROM {_STAGE[spec.table]} ON CONFLICT DO NOTHING"
        )
        return inserted, staged - inserted

    def _dead_letters(self, table: _Rows, rejects: list[DeadLetter]) -> int:
        rows = table.rows + dead_rows(rejects)
        records = table.records + rejects
        write = self._copier(DEAD)
        refused: list[DeadLetter] = []
        stored = self._write(write, _Rows(rows, records), "dead_letter", refused)
        if refused:
            # A dead letter the server refuses (a NUL byte, a lone surrogate)
            # is kept as the escaped JSON of itself, which always fits.
            write(dead_rows(refused))
            rejects.extend(refused)
        return stored + len(refused)

    def _execute(self, sql: str) -> int:
        self._cur.execute(sql)
        return self._cur.rowcount

    def _copier(self, spec: CopySpec, target: str | None = None) -> Callable[[Sequence[Row]], None]:
        cur, sql, types = self._cur, spec.copy_sql(target), spec.types

        def write(rows: Sequence[Row]) -> None:
            with cur.copy(sql) as copy:
                copy.set_types(list(types))
                write_row = copy.write_row
                for row in rows:
                    write_row(row)

        return write

    def _many(self, sql: str) -> Callable[[Sequence[Row]], None]:
        cur = self._cur

        def write(rows: Sequence[Row]) -> None:
            cur.executemany(sql, rows)

        return write

    def _write(
        self,
        write: Callable[[Sequence[Row]], None],
        table: _Rows,
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
                rejects.append(_dead_letter(records[0], name, exc))
                return 0
        # ~2 log2(n) extra COPYs for one bad row; refused rows are rare.
        mid = len(rows) // 2
        return self._bisect(write, rows[:mid], records[:mid], name, rejects) + self._bisect(
            write, rows[mid:], records[mid:], name, rejects
        )


# -- preparing a batch (pure Python) ---------------------------------------


def prepare_batch(batch: WriteBatch) -> PreparedBatch:
    """The rows of every table of ``batch``; records no row can be built from become rejects.

    Thread-safe (it reads ``batch`` and the shared encoding caches only).
    """
    rejects: list[DeadLetter] = []

    def rows_of(
        records: Sequence[Any],
        build: Callable[[Sequence[Any]], list[Row]],
        name: str,
        ints: Sequence[IntField] = (),
    ) -> _Rows:
        rows, kept, refused = build_rows(records, build, ints)
        rejects.extend(_dead_letter(record, name, why) for record, why in refused)
        return _Rows(rows, kept)

    trades, trade_dups = _first_trades(batch.trades)
    quotes, quote_dups = _first_quotes(batch.quotes)
    candles, superseded = _latest_candles(batch.candles)
    offset_rows: list[Row] = offsets_sql.offset_rows(batch.offsets)
    p = PreparedBatch(
        trades=rows_of(trades, trade_rows, "trades", TRADE_INTS),
        quotes=rows_of(quotes, quote_rows, "quotes", QUOTE_INTS),
        candles=rows_of(candles, candle_rows, "candles"),
        raw=rows_of(batch.raw, raw_rows, "trades_raw"),
        gaps=rows_of(batch.gaps, gap_rows, "fetch_jobs"),
        offsets=_Rows(offset_rows, offset_rows),
        dead=rows_of(batch.dead, dead_rows, "dead_letter"),
        trade_dups=trade_dups,
        quote_dups=quote_dups,
        candles_superseded=superseded,
        rejects=rejects,
        days={},
    )
    # Days from the rows that will be written, not from refused records.
    p.days = {
        "trades": days_of(map(_ts_ns, p.trades.records)),
        "quotes": days_of(map(_ts_ns, p.quotes.records)),
        "candles": days_of(map(_open_ts_ns, p.candles.records)),
        "trades_raw": days_of(map(_received_ns, p.raw.records)),
    }
    return p


_ts_ns = attrgetter("ts_ns")
_open_ts_ns = attrgetter("open_ts_ns")
_received_ns = attrgetter("received_ns")


def _first_trades(trades: list[Trade]) -> tuple[list[Trade], int]:
    """One trade per natural key (the first seen, as ON CONFLICT DO NOTHING would keep)."""
    keys = [(t.provider, t.symbol, t.channel, t.trade_id, t.ts_ns // NS_PER_MS) for t in trades]
    return _first_by_key(keys, trades)


def _first_quotes(quotes: list[Quote]) -> tuple[list[Quote], int]:
    keys = [(q.provider, q.symbol, q.channel, q.seq, q.ts_ns // NS_PER_MS) for q in quotes]
    return _first_by_key(keys, quotes)


def _first_by_key(keys: list[Any], records: list[Any]) -> tuple[list[Any], int]:
    """The first record of each key, in arrival order, and how many repeats were dropped.

    Keys are built in a comprehension and checked with one ``set``: a batch
    without repeats (nearly every batch) costs no Python step per record.
    """
    if len(set(keys)) == len(keys):
        return records, 0
    seen: dict[Any, Any] = {}
    for key, record in zip(keys, records, strict=True):
        seen.setdefault(key, record)
    return list(seen.values()), len(records) - len(seen)


def _latest_candles(candles: list[Candle]) -> tuple[list[Candle], int]:
    """One version per bar, chosen by the same rule the upsert applies.

    ON CONFLICT DO UPDATE cannot touch one row twice in a statement, so the
    versions in a batch are folded here in arrival order: a later version
    replaces an earlier one unless that one is final or newer.
    """
    latest: dict[tuple[str, str, str, int], Candle] = {}
    for c in candles:
        key = (c.provider, c.symbol, c.interval, c.open_ts_ns // NS_PER_MS)
        known = latest.get(key)
        if known is None or (not known.final and c.event_ts_ns >= known.event_ts_ns):
            latest[key] = c
    return list(latest.values()), len(candles) - len(latest)


def _dead_letter(record: Any, table: str, problem: str | BaseException) -> DeadLetter:
    """A refused record as a dead letter that is certain to fit ``dead_letter``."""
    if isinstance(problem, BaseException):
        problem = f"{type(problem).__name__}: {str(problem).strip()}"
    if isinstance(record, msgspec.Struct):
        provider = str(getattr(record, "provider", ""))
        received = getattr(record, "received_ns", None)
        try:
            payload = msgspec.json.encode(record).decode()
        except (msgspec.EncodeError, UnicodeError, TypeError):
            payload = repr(record)
    else:  # a parameter tuple (stream_offsets rows)
        provider, received, payload = str(record[0]), None, repr(record)
    if not isinstance(received, int) or not 0 <= received < 1 << 62:
        received = time.time_ns()
    return DeadLetter(
        provider=storable_text(provider),
        source=f"writer:{table}",
        reason=storable_text(f"{table}: {problem}"),
        payload=storable_text(payload),
        received_ns=received,
    )
