"""Row preparation: a ``WriteBatch`` turned into the rows of every table, no database.

This is the pure half of writing (the transactional half is
:mod:`mdagent.db.copy_writer`). It runs in its own worker thread while the
previous batch commits, so it touches nothing but the batch and the shared
encoding caches of :mod:`mdagent.db.copy_rows`. Repeats of a natural key
inside one batch are folded here (COPY would fail on them, and
``ON CONFLICT DO UPDATE`` cannot touch a row twice in one statement); a
record no row can be built from becomes a dead letter, never an exception.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any

import attrs
import msgspec

from mdagent.db import offsets as offsets_sql
from mdagent.db.copy_rows import (
    NS_PER_MS,
    QUOTE_INTS,
    QUOTES,
    TRADE_INTS,
    TRADES,
    IntField,
    Row,
    build_rows,
    candle_rows,
    copy_payload,
    days_of,
    dead_rows,
    gap_rows,
    quote_rows,
    raw_rows,
    trade_rows,
)
from mdagent.db.jobs import JobProgress
from mdagent.pipeline.batches import WriteBatch
from mdagent.records import Candle, DeadLetter, Quote, Trade
from mdagent.text import storable_text


@attrs.define
class TableRows:
    """Rows of one table and the records they came from (to name a refused one).

    ``rows[i]`` is the row of ``records[i]``.
    """

    _rows: list[Row] | None
    records: list[Any]
    # The rows' whole binary COPY stream, encoded ahead (trades and quotes,
    # copy_rows.copy_payload); None: the writer COPYs ``rows``.
    payload: bytearray | None = None
    # Builds the rows again from ``records`` once released (release_rows).
    _build: Callable[[Sequence[Any]], list[Row]] | None = None

    @property
    def rows(self) -> list[Row]:
        """The rows; built again from the records if they were released."""
        rows = self._rows
        if rows is None:
            assert self._build is not None
            rows = self._rows = self._build(self.records)
        return rows

    def release_rows(self, build: Callable[[Sequence[Any]], list[Row]]) -> None:
        """Drop the rows while ``payload`` carries them (only the slow path reads rows).

        A batch waits for its commit with its rows' tuples and their ints:
        ~1.7 MB per 6,000 rows, in every prepared batch (issue 14, memory
        with worker processes). ``build`` makes the same rows again.
        """
        self._rows, self._build = None, build


@attrs.define
class PreparedBatch:
    """A batch turned into rows: pure Python, no database (see :func:`prepare_batch`)."""

    trades: TableRows
    quotes: TableRows
    candles: TableRows
    raw: TableRows
    gaps: TableRows
    offsets: TableRows
    dead: TableRows
    trade_dups: int
    quote_dups: int
    candles_superseded: int
    rejects: list[DeadLetter]  # records no row could be built from
    days: dict[str, set[Any]]  # table -> days with rows
    jobs: list[JobProgress] = attrs.Factory(list)  # backfill checkpoints (db/jobs.py)

    def is_empty(self) -> bool:
        return (
            not self.jobs
            and not any(
                t.records
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
    ) -> TableRows:
        rows, kept, refused = build_rows(records, build, ints)
        rejects.extend(as_dead_letter(record, name, why) for record, why in refused)
        return TableRows(rows, kept)

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
        offsets=TableRows(offset_rows, offset_rows),
        dead=rows_of(batch.dead, dead_rows, "dead_letter"),
        trade_dups=trade_dups,
        quote_dups=quote_dups,
        candles_superseded=superseded,
        rejects=rejects,
        days={},
        jobs=list(batch.jobs),
    )
    p.trades.payload = copy_payload(TRADES, p.trades.rows)
    p.quotes.payload = copy_payload(QUOTES, p.quotes.rows)
    for table, build in ((p.trades, trade_rows), (p.quotes, quote_rows)):
        if table.payload is not None:
            table.release_rows(build)
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


# A natural key is (identity, event time in ms). When the identities of a
# batch are distinct, so are its keys: that check runs in C (attrgetter, set)
# and holds for nearly every batch; the keys with the time are built only
# when an identity repeats.
_trade_identity = attrgetter("provider", "symbol", "channel", "trade_id")
_quote_identity = attrgetter("provider", "symbol", "channel", "seq")


def _first_trades(trades: list[Trade]) -> tuple[list[Trade], int]:
    """One trade per natural key (the first seen, as ON CONFLICT DO NOTHING would keep)."""
    if len(set(map(_trade_identity, trades))) == len(trades):
        return trades, 0
    keys = [(t.provider, t.symbol, t.channel, t.trade_id, t.ts_ns // NS_PER_MS) for t in trades]
    return _first_by_key(keys, trades)


def _first_quotes(quotes: list[Quote]) -> tuple[list[Quote], int]:
    if len(set(map(_quote_identity, quotes))) == len(quotes):
        return quotes, 0
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


def as_dead_letter(record: Any, table: str, problem: str | BaseException) -> DeadLetter:
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
