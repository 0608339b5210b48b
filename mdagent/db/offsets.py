"""Stream offsets: the last committed (sequence, event time) per stream.

An offset only ever moves forward. In memory ``advance`` keeps the maximum of
each part; in the database the upsert takes ``GREATEST`` of the stored and the
new value, so a retried, late or overlapping batch (backfill, a second agent)
can never move it back. ``GREATEST`` ignores NULL, so a part that a batch does
not know (None) keeps its stored value.
"""

from __future__ import annotations

from collections.abc import Mapping

import psycopg

_NS_PER_DAY = 86_400 * 1_000_000_000

OffsetKey = tuple[str, str, str]  # (provider, symbol, channel)
Offset = tuple[int | None, int | None]  # (last_seq, last_ts_ns)

UPSERT = (
    "INSERT INTO stream_offsets AS o (provider, symbol, channel, last_seq, last_ts_ns)"
    " VALUES (%s, %s, %s, %s, %s)"
    " ON CONFLICT (provider, symbol, channel) DO UPDATE SET"
    # Polygon sequence numbers restart each day: a later UTC day's offset
    # replaces the sequence; within a day (and for ids that never restart)
    # the greater one wins.
    " last_seq = CASE WHEN excluded.last_ts_ns / 86400000000000 > o.last_ts_ns / 86400000000000"
    " THEN excluded.last_seq ELSE GREATEST(o.last_seq, excluded.last_seq) END,"
    " last_ts_ns = GREATEST(o.last_ts_ns, excluded.last_ts_ns),"
    " updated_at = now()"
)


def _max(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if a >= b else b


def advance(
    offsets: dict[OffsetKey, Offset], key: OffsetKey, seq: int | None, ts_ns: int | None
) -> None:
    """Merge one observation into ``offsets``; never moves a part backwards."""
    known = offsets.get(key)
    if known is None:
        offsets[key] = (seq, ts_ns)
    elif (
        ts_ns is not None
        and known[1] is not None
        and ts_ns // _NS_PER_DAY > known[1] // _NS_PER_DAY
    ):
        # A later day: the sequence may have restarted (Polygon), take it as is.
        offsets[key] = (seq if seq is not None else known[0], ts_ns)
    else:
        offsets[key] = (_max(known[0], seq), _max(known[1], ts_ns))


def offset_rows(
    offsets: Mapping[OffsetKey, Offset],
) -> list[tuple[str, str, str, int | None, int | None]]:
    """Upsert parameters, sorted so that two agents lock shared rows in one order (no deadlock)."""
    return [
        (*key, seq, ts) for key, (seq, ts) in sorted(offsets.items()) if (seq, ts) != (None, None)
    ]


def load_offsets(conn: psycopg.Connection) -> dict[OffsetKey, Offset]:
    rows = conn.execute(
        "SELECT provider, symbol, channel, last_seq, last_ts_ns FROM stream_offsets"
    ).fetchall()
    return {(p, s, c): (seq, ts) for p, s, c, seq, ts in rows}
