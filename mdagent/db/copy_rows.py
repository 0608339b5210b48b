"""Rows for binary COPY: one tuple per record, in the table's column order.

Why binary COPY (measured on the 2-core box, 50k trades): the server spends
~25% less time than on text COPY, and the tuples are cheaper to build because
timestamps need no ``datetime`` objects (see ``PG_EPOCH_US``). The price is
that the server does no casts: every value must already have the exact binary
layout of its column, which the ``types`` of each ``CopySpec`` pin down.

Per-row Python work is one tuple built in a list comprehension. Checks that
would cost a Python step per row (integer ranges, see ``ints_in_range``) run
on the distinct values of a column instead, which ``set(map(...))`` collects
at C speed.

Pre-encoded columns (``numeric`` and ``int4[]``). psycopg's binary dumpers
cost ~0.5 us per Decimal (it goes through ``Decimal.as_tuple()``) and several
us per list (the array dumper is pure Python), and the same few prices,
sizes and condition sets recur all the time. So those columns are encoded
here, once per distinct value (a bounded cache also spans batches), by
psycopg's own dumpers: the bytes are exactly the ones psycopg would have
written. The rows then hold ``bytes``, which the COPY passes through as they
are (:func:`register_encoded_dumpers`, on the cursor that runs the COPY).
"""

from __future__ import annotations

import datetime as dt
import decimal
import struct
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from operator import attrgetter
from typing import Any, Final, TypeVar

import attrs
import psycopg
from psycopg import pq
from psycopg.adapt import AdaptersMap, Dumper, Transformer

from mdagent.db.partitions import EPOCH_DAY, NS_PER_DAY
from mdagent.memo import Memo

# psycopg's row formatter is not public API (pinned in the lock); a psycopg
# without it falls back to ``write_row`` (same bytes, slower).
try:
    from psycopg._copy_base import format_row_binary
except ImportError:  # pragma: no cover - another psycopg
    format_row_binary = None
from mdagent.records import Candle, DeadLetter, Gap, Quote, RawFrame, Trade

Row = tuple[Any, ...]
R = TypeVar("R")

NS_PER_MS = 1_000_000

# In binary COPY a timestamptz is an int64 count of microseconds since
# 2000-01-01 UTC (integer datetimes are the only kind since PostgreSQL 10):
# byte for byte what psycopg's int8 dumper writes. So timestamp columns are
# declared "int8" in the COPY types and fed plain ints. Building a datetime
# costs ~300-400 ns per value, this subtraction ~40 ns; the server still
# range-checks the value ("timestamp out of range").
PG_EPOCH_US = 946_684_800_000_000
TIMESTAMPTZ = "int8"

# A malformed record (a price that is not a decimal literal, a timestamp past
# year 294276, a None where a value is required, a decimal beyond numeric's
# binary format: psycopg's DataError) fails while its row is built.
BUILD_ERRORS = (ArithmeticError, ValueError, TypeError, psycopg.DataError)


@attrs.frozen
class CopySpec:
    """Where one kind of row goes and how its columns are typed for binary COPY."""

    table: str
    columns: tuple[str, ...]
    types: tuple[str, ...]

    def copy_sql(self, target: str | None = None) -> str:
        return f"COPY {target or self.table} ({', '.join(self.columns)}) FROM STDIN (FORMAT BINARY)"

    @property
    def column_list(self) -> str:
        return ", ".join(self.columns)


@attrs.frozen
class IntField:
    """A record field stored in a 2- or 4-byte integer column (or an array of them).

    psycopg's binary int2/int4 dumpers chosen by ``set_types`` truncate an
    out-of-range Python int silently (2**31 + 5 is stored as -2147483643;
    psycopg 3.3.9), so these ranges are checked here. int8 overflows raise
    ``OverflowError`` in psycopg, and the server checks everything else.
    """

    attr: str
    bits: int
    array: bool = False


TRADES = CopySpec(
    "trades",
    (
        "provider", "symbol", "channel", "trade_id", "ts", "ts_ns", "seq", "price", "size",
        "is_buyer_maker", "exchange", "tape", "conditions", "trf_id", "first_trade_id",
        "last_trade_id", "correction", "received_at",
    ),
    (
        "text", "text", "text", "text", TIMESTAMPTZ, "int8", "int8", "numeric", "numeric",
        "bool", "int4", "int2", "int4[]", "int4", "int8",
        "int8", "int4", TIMESTAMPTZ,
    ),
)  # fmt: skip
TRADE_INTS = (
    IntField("exchange", 32),
    IntField("tape", 16),
    IntField("conditions", 32, array=True),
    IntField("trf_id", 32),
    IntField("correction", 32),
)

QUOTES = CopySpec(
    "quotes",
    (
        "provider", "symbol", "channel", "seq", "ts", "ts_ns", "bid_price", "bid_size",
        "ask_price", "ask_size", "bid_exchange", "ask_exchange", "conditions", "indicators",
        "tape", "received_at",
    ),
    (
        "text", "text", "text", "int8", TIMESTAMPTZ, "int8", "numeric", "numeric",
        "numeric", "numeric", "int4", "int4", "int4[]", "int4[]",
        "int2", TIMESTAMPTZ,
    ),
)  # fmt: skip
QUOTE_INTS = (
    IntField("bid_exchange", 32),
    IntField("ask_exchange", 32),
    IntField("conditions", 32, array=True),
    IntField("indicators", 32, array=True),
    IntField("tape", 16),
)

CANDLES = CopySpec(
    "candles",
    (
        "provider", "symbol", "interval", "ts", "close_ts", "open", "high", "low", "close",
        "volume", "quote_volume", "vwap", "trade_count", "final", "event_ts_ns", "received_at",
    ),
    (
        "text", "text", "text", TIMESTAMPTZ, TIMESTAMPTZ, "numeric", "numeric", "numeric",
        "numeric", "numeric", "numeric", "numeric", "int8", "bool", "int8", TIMESTAMPTZ,
    ),
)  # fmt: skip

RAW = CopySpec(
    "trades_raw",
    ("provider", "source", "received_at", "payload"),
    ("text", "text", TIMESTAMPTZ, "text"),
)

DEAD = CopySpec(
    "dead_letter",
    ("provider", "source", "reason", "payload", "received_at"),
    ("text", "text", "text", "text", TIMESTAMPTZ),
)


def key_ts_us(ts_ns: int) -> int:
    """The key column ``ts``: event time truncated to ms, as binary timestamptz."""
    return ts_ns // NS_PER_MS * 1000 - PG_EPOCH_US


# -- pre-encoded columns -----------------------------------------------------

_NUMERIC_OID: Final = psycopg.adapters.types["numeric"].oid
_INT4_ARRAY_OID: Final = psycopg.adapters.types["int4"].array_oid
# The dumpers a binary COPY picks for these column types (by oid, as
# ``Copy.set_types`` does), from psycopg's default adapters: encoding with
# them gives the very bytes the COPY would have sent for a Decimal or a list.
_NUMERIC_DUMPER: Final = psycopg.adapters.get_dumper_by_oid(_NUMERIC_OID, pq.Format.BINARY)(Decimal)
_INT4_ARRAY_DUMPER: Final = psycopg.adapters.get_dumper_by_oid(_INT4_ARRAY_OID, pq.Format.BINARY)(
    list, Transformer()
)
# Encodings kept across batches (memo.py): at most ENCODINGS_LIMIT of the
# recently used values each. The Binance bench tape's working set is ~9,000
# distinct prices and sizes, all touched within a few batches; a memo of half
# that thrashes (hit rate 0.83), this one keeps 0.998 (README "Memory over time").
ENCODINGS_LIMIT: Final = 1 << 14
_numeric_cache: Final = Memo[str, bytes](ENCODINGS_LIMIT)
_known_numeric: Final = _numeric_cache.recent.get
_array_cache: Final = Memo[tuple[int, ...], bytes](ENCODINGS_LIMIT)
_known_array: Final = _array_cache.recent.get


class _EncodedNumeric:
    """Marker type (never instantiated) naming the pass-through numeric dumper."""


class _EncodedInt4Array:
    """Marker type (never instantiated) naming the pass-through int4[] dumper."""


class NumericParam(bytes):
    """A ``numeric`` value already in binary form, as a statement parameter.

    Candles go through an ``INSERT ... ON CONFLICT`` (their upsert), not a
    COPY, so their pre-encoded values carry their type in their class; the
    dumpers are registered by :func:`register_encoded_dumpers`.
    """


class TimestamptzParam(int):
    """A ``timestamptz`` as µs since 2000-01-01 UTC (see ``PG_EPOCH_US``), as a parameter."""


class _NumericBytes(Dumper):
    """Binary ``numeric`` already encoded: COPY columns (by oid) and ``NumericParam``s."""

    format = pq.Format.BINARY
    oid = _NUMERIC_OID
    # bytes(b) is b itself, at C speed: no Python frame per value. Anything
    # else (a Decimal that bypassed the encoding) is a TypeError, an input
    # fault the writer handles like any refused value.
    dump = bytes  # type: ignore[assignment]


class _Int4ArrayBytes(Dumper):
    """Binary COPY of an ``int4[]`` column whose values are already encoded."""

    format = pq.Format.BINARY
    oid = _INT4_ARRAY_OID
    dump = bytes  # type: ignore[assignment]


class _TimestamptzParamDumper(Dumper):
    """A ``TimestamptzParam`` as a binary ``timestamptz`` parameter (big-endian int64)."""

    format = pq.Format.BINARY
    oid = psycopg.adapters.types["timestamptz"].oid

    def dump(self, obj: Any) -> bytes:
        return _INT8.pack(obj)


_INT8: Final = struct.Struct(">q")


def register_encoded_dumpers(adapters: AdaptersMap) -> None:
    """Make binary COPYs with ``set_types`` pass pre-encoded numeric / int4[] bytes through.

    Only lookups by oid are affected (the marker types are never values), so
    parameters of ordinary statements keep psycopg's usual dumpers. Register on
    the cursor whose COPYs carry rows from this module. Also registers the
    parameter types of ``candle_rows`` (``NumericParam``, ``TimestamptzParam``).
    """
    adapters.register_dumper(_EncodedNumeric, _NumericBytes)
    adapters.register_dumper(_EncodedInt4Array, _Int4ArrayBytes)
    adapters.register_dumper(NumericParam, _NumericBytes)  # the same bytes as parameters
    adapters.register_dumper(TimestamptzParam, _TimestamptzParamDumper)


def encode_numeric(literal: str) -> bytes:
    """One decimal literal as numeric binary, keeping its digits and scale.

    ``Decimal`` keeps the literal's exponent, so numeric stores the same digits
    and scale as the text ("0.00123000" stays "0.00123000").
    """
    encoded = _known_numeric(literal)
    return (
        encoded if encoded is not None else _numeric_cache.recall_or_make(literal, _encode_numeric)
    )


def _encode_numeric(literal: str) -> bytes:
    value = Decimal(literal)
    # psycopg would store a signalling NaN as a plain NaN: not what was sent.
    if value.is_snan():
        raise decimal.InvalidOperation(f"not a decimal literal: {literal!r}")
    encoded = _NUMERIC_DUMPER.dump(value)
    assert encoded is not None  # only None dumps to NULL
    return bytes(encoded)


def numeric_column(literals: list[str]) -> list[bytes]:
    """The literals as numeric binary: one parse and encoding per distinct literal.

    Prices repeat a lot within a batch and across batches; crypto sizes mostly
    do not (each is then encoded once, which the COPY would have done anyway).
    """
    table = {literal: encode_numeric(literal) for literal in set(literals)}
    return list(map(table.__getitem__, literals))


def _encode_int4_array(values: Sequence[int]) -> bytes:
    encoded = _INT4_ARRAY_DUMPER.dump(list(values))
    assert encoded is not None  # only None dumps to NULL
    return bytes(encoded)


def int4_array(values: tuple[int, ...] | None) -> bytes | None:
    """An int4[] value (ranges already checked by ``ints_in_range``) as binary."""
    if values is None:
        return None
    encoded = _known_array(values)
    return (
        encoded if encoded is not None else _array_cache.recall_or_make(values, _encode_int4_array)
    )


def int4_array_column(values: list[tuple[int, ...] | None]) -> list[bytes | None]:
    """Condition / indicator sets recur (a dozen distinct ones): encode each once."""
    table = {v: int4_array(v) for v in set(values)}
    return list(map(table.__getitem__, values))


# -- the COPY stream ----------------------------------------------------------

# The binary COPY file format (PostgreSQL docs, "COPY ... Binary Format"): an
# 11-byte signature, a 32-bit flags field (0: no OIDs) and a 32-bit header
# extension length (0); then the tuples; then a 16-bit -1 as the trailer.
COPY_BINARY_HEADER: Final = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
COPY_BINARY_TRAILER: Final = b"\xff\xff"
# Bytes handed to libpq at a time (psycopg's own row mode sends 32 KiB).
COPY_CHUNK_BYTES: Final = 1 << 17


def copy_binary_rows(copy: psycopg.Copy, rows: Iterable[Row]) -> None:
    """Send ``rows`` to a binary ``COPY ... FROM STDIN`` whose types are set.

    The same bytes as ``copy.write_row`` per row (the tuples are encoded by
    psycopg's own row formatter with the copy's dumpers, ``set_types``), but
    without its two Python calls per row: at ~6,000 rows a batch those were
    a third of the writer thread's Python time (issue 14 profile). The
    header and trailer are written here, so the copy is in block mode
    (``copy.write``), which adds neither. A value a dumper refuses raises as
    it would from ``write_row``.
    """
    formatter = getattr(copy, "formatter", None)
    if format_row_binary is None or formatter is None:
        for row in rows:
            copy.write_row(row)
        return
    transformer = formatter.transformer
    buffer = bytearray(COPY_BINARY_HEADER)
    for row in rows:
        format_row_binary(row, transformer, buffer)
        if len(buffer) >= COPY_CHUNK_BYTES:
            copy.write(buffer)
            buffer = bytearray()
    buffer += COPY_BINARY_TRAILER
    copy.write(buffer)


# The adapters a prepared payload is encoded with: psycopg's, plus the
# pass-through dumpers of the pre-encoded columns (as on the COPY's cursor).
_PAYLOAD_ADAPTERS: Final = AdaptersMap(psycopg.adapters)
register_encoded_dumpers(_PAYLOAD_ADAPTERS)


def copy_payload(spec: CopySpec, rows: Sequence[Row]) -> bytearray | None:
    """The whole binary COPY stream of ``rows`` (header, tuples, trailer), or None.

    Encoded ahead, in the thread that prepares the batch, so that the thread
    holding the database connection only sends bytes: formatting inside the
    COPY made the server wait for the client (wait event ClientRead) while
    the formatter waited for the GIL (issue 14, Polygon profile). Same bytes
    as :func:`copy_binary_rows`. None when psycopg has no row formatter or a
    value cannot be encoded (an int beyond int64, a lone surrogate...): the
    writer then COPYs the rows themselves and meets the error there.
    """
    if format_row_binary is None or not rows:
        return None
    tx = Transformer(_PAYLOAD_ADAPTERS)
    tx.set_dumper_types(_oids(spec), pq.Format.BINARY)
    buffer = bytearray(COPY_BINARY_HEADER)
    try:
        for row in rows:
            format_row_binary(row, tx, buffer)
    except BUILD_ERRORS:  # OverflowError and UnicodeEncodeError are among them
        return None
    buffer += COPY_BINARY_TRAILER
    return buffer


def _oids(spec: CopySpec) -> list[int]:
    types = _PAYLOAD_ADAPTERS.types
    return [types.get_oid(name) for name in spec.types]


def trade_rows(trades: Sequence[Trade]) -> list[Row]:
    prices = numeric_column(list(map(_price, trades)))
    sizes = numeric_column(list(map(_size, trades)))
    conditions = int4_array_column(list(map(_conditions, trades)))
    off = PG_EPOCH_US
    return [
        (
            t.provider, t.symbol, t.channel, t.trade_id,
            t.ts_ns // NS_PER_MS * 1000 - off, t.ts_ns, t.seq,
            price, size, t.is_buyer_maker, t.exchange, t.tape, cond,
            t.trf_id, t.first_trade_id, t.last_trade_id, t.correction,
            t.received_ns // 1000 - off,
        )
        for t, price, size, cond in zip(trades, prices, sizes, conditions, strict=True)
    ]  # fmt: skip


def quote_rows(quotes: Sequence[Quote]) -> list[Row]:
    bid_p = numeric_column(list(map(_bid_price, quotes)))
    bid_s = numeric_column(list(map(_bid_size, quotes)))
    ask_p = numeric_column(list(map(_ask_price, quotes)))
    ask_s = numeric_column(list(map(_ask_size, quotes)))
    conditions = int4_array_column(list(map(_conditions, quotes)))
    indicators = int4_array_column(list(map(_indicators, quotes)))
    off = PG_EPOCH_US
    return [
        (
            q.provider, q.symbol, q.channel, q.seq,
            q.ts_ns // NS_PER_MS * 1000 - off, q.ts_ns, bp, bs, ap, as_,
            q.bid_exchange, q.ask_exchange, cond, ind,
            q.tape, q.received_ns // 1000 - off,
        )
        for q, bp, bs, ap, as_, cond, ind in zip(
            quotes, bid_p, bid_s, ask_p, ask_s, conditions, indicators, strict=True
        )
    ]  # fmt: skip


def candle_rows(candles: Sequence[Candle]) -> list[Row]:
    """Parameter rows for ``CANDLE_UPSERT``, in ``CANDLES.columns`` order."""
    off = PG_EPOCH_US
    ts = TimestamptzParam

    def d(literal: str) -> NumericParam:
        return NumericParam(encode_numeric(literal))

    return [
        (
            c.provider, c.symbol, c.interval,
            ts(c.open_ts_ns // NS_PER_MS * 1000 - off), ts(c.close_ts_ns // 1000 - off),
            d(c.open), d(c.high), d(c.low), d(c.close), d(c.volume),
            None if c.quote_volume is None else d(c.quote_volume),
            None if c.vwap is None else d(c.vwap),
            c.trade_count, c.final, c.event_ts_ns, ts(c.received_ns // 1000 - off),
        )
        for c in candles
    ]  # fmt: skip


# The candle upsert: one statement per bar, sent in one pipeline
# (``executemany``). Candles used to be COPYed into an ON COMMIT DELETE ROWS
# temp table and upserted from there, but touching a temp table makes the
# server truncate every such table at COMMIT: on the Polygon bench that file
# truncation (wait event DataFileTruncate) was half of the COMMIT waits,
# paid by nearly every batch (a bar or a bar update is in most of them).
CANDLE_UPSERT = (
    f"INSERT INTO candles AS c ({CANDLES.column_list})"
    f" VALUES ({', '.join(['%b'] * len(CANDLES.columns))})"
    " ON CONFLICT (provider, symbol, interval, ts) DO UPDATE SET"
    + ",".join(
        f" {col} = excluded.{col}"
        for col in CANDLES.columns
        if col not in ("provider", "symbol", "interval", "ts")
    )
    # A final bar is final; an older re-send never overwrites a newer one.
    + " WHERE NOT c.final AND excluded.event_ts_ns >= c.event_ts_ns"
)


def raw_rows(frames: Sequence[RawFrame]) -> list[Row]:
    off = PG_EPOCH_US
    return [(f.provider, f.source, f.received_ns // 1000 - off, f.payload) for f in frames]


def dead_rows(dead: Sequence[DeadLetter]) -> list[Row]:
    off = PG_EPOCH_US
    return [(d.provider, d.source, d.reason, d.payload, d.received_ns // 1000 - off) for d in dead]


GAP_INSERT = (
    "INSERT INTO fetch_jobs (provider, symbol, channel, kind, status, reason,"
    " from_seq, to_seq, from_ts_ns, to_ts_ns)"
    " VALUES (%s, %s, %s, 'gap', 'pending', %s, %s, %s, %s, %s)"
)


def gap_rows(gaps: Sequence[Gap]) -> list[Row]:
    return [
        (g.provider, g.symbol, g.channel, g.reason, g.from_seq, g.to_seq, g.from_ts_ns, g.to_ts_ns)
        for g in gaps
    ]


def ints_in_range(records: Sequence[Any], fields: Sequence[IntField]) -> str | None:
    """None if every listed integer fits its column, else what does not fit."""
    for field in fields:
        distinct = set(map(attrgetter(field.attr), records))
        distinct.discard(None)
        if not distinct:
            continue
        values = {v for arr in distinct for v in arr} if field.array else distinct
        if not values:
            continue
        limit = 1 << (field.bits - 1)
        low, high = min(values), max(values)
        if low < -limit or high >= limit:
            bad = low if low < -limit else high
            return f"value {bad} out of range for {field.bits}-bit column {field.attr}"
    return None


def days_of(ts_values: Iterable[int]) -> set[dt.date]:
    """The UTC days (partitions) of ns timestamps.

    A day past year 9999 has no ``date`` and gets no partition: such a row
    lands in the default partition, or the server refuses it as out of range.
    """
    values = ts_values if isinstance(ts_values, list) else list(ts_values)
    if not values:
        return set()
    # Nearly every batch lies within one day: min and max run in C, the set
    # comprehension only when a batch spans midnight.
    low, high = min(values) // NS_PER_DAY, max(values) // NS_PER_DAY
    days = set()
    for day in {low} if low == high else {ts // NS_PER_DAY for ts in values}:
        if _MIN_DAY <= day <= _MAX_DAY:
            days.add(EPOCH_DAY + dt.timedelta(days=day))
    return days


_MIN_DAY = (dt.date.min - EPOCH_DAY).days
_MAX_DAY = (dt.date.max - EPOCH_DAY).days


_price = attrgetter("price")
_size = attrgetter("size")
_bid_price = attrgetter("bid_price")
_bid_size = attrgetter("bid_size")
_ask_price = attrgetter("ask_price")
_ask_size = attrgetter("ask_size")
_conditions = attrgetter("conditions")
_indicators = attrgetter("indicators")


def build_rows(
    records: Sequence[R],
    build: Callable[[Sequence[R]], list[Row]],
    int_fields: Sequence[IntField] = (),
) -> tuple[list[Row], list[R], list[tuple[R, str]]]:
    """Rows for ``records``; records that cannot become a row are returned with the reason.

    The whole batch is built in one go; only when that fails is it rebuilt
    one record at a time to name the bad ones (rare, and then cost is no issue).
    Returns (rows, the records those rows came from, rejected records).
    """
    if not records:
        return [], [], []
    if ints_in_range(records, int_fields) is None:
        try:
            return build(records), list(records), []
        except BUILD_ERRORS:
            pass
    rows: list[Row] = []
    kept: list[R] = []
    rejected: list[tuple[R, str]] = []
    for record in records:
        problem = ints_in_range((record,), int_fields)
        if problem is None:
            try:
                rows.extend(build((record,)))
                kept.append(record)
                continue
            except BUILD_ERRORS as exc:
                problem = f"{type(exc).__name__}: {exc}"
        rejected.append((record, problem))
    return rows, kept, rejected
