"""Stream offsets: the (sequence, event time) of the newest committed record per stream.

An offset only ever moves forward in time. The sequence is the newest
record's (the greater one on a tie in time), not the greatest ever seen: a
provider sequence that resets per session or goes backwards (Polygon ``q``,
wire-formats.md 2.7) then never makes a restarted agent see a new record as
old, and ids that only grow (Binance) get the same value as a maximum. The
in-memory ``advance`` and the database upsert apply the same rule, so a
retried, late or overlapping batch (backfill, a second agent) can never move
an offset back. A part a batch does not know (None) keeps its stored value.
"""

from __future__ import annotations

from collections.abc import Mapping

import psycopg

OffsetKey = tuple[str, str, str]  # (provider, symbol, channel)
Offset = tuple[int | None, int | None]  # (last_seq, last_ts_ns)

UPSERT = (
    "INSERT INTO stream_offsets AS o (provider, symbol, channel, last_seq, last_ts_ns)"
    " VALUES (%s, %s, %s, %s, %s)"
    " ON CONFLICT (provider, symbol, channel) DO UPDATE SET"
    # The newest record's sequence; on a tie in time (or no time) the greater.
    " last_seq = CASE"
    " WHEN excluded.last_ts_ns > o.last_ts_ns THEN COALESCE(excluded.last_seq, o.last_seq)"
    " WHEN excluded.last_ts_ns < o.last_ts_ns THEN COALESCE(o.last_seq, excluded.last_seq)"
    " ELSE GREATEST(o.last_seq, excluded.last_seq) END,"
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
    """Merge one observation into ``offsets`` (the rule of UPSERT); time never moves back."""
    known = offsets.get(key)
    if known is None:
        offsets[key] = (seq, ts_ns)
        return
    known_seq, known_ts = known
    if ts_ns is not None and known_ts is not None and ts_ns != known_ts:
        if ts_ns > known_ts:
            offsets[key] = (seq if seq is not None else known_seq, ts_ns)
        elif known_seq is None:
            offsets[key] = (seq, known_ts)
        return
    offsets[key] = (_max(known_seq, seq), _max(known_ts, ts_ns))


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
