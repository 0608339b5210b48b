"""Day partitions of the time-partitioned tables.

The writer asks for the partitions of the days in each batch (cached, so this
is a dictionary lookup on the hot path); maintenance creates days ahead. The
SQL function ``mdagent_ensure_day_partition`` (migrations/001) moves rows that
fell into the default partition, so a late partition never fails.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import psycopg

PARTITIONED_TABLES = ("trades", "quotes", "candles", "trades_raw")
NS_PER_DAY = 86_400 * 1_000_000_000
EPOCH_DAY = dt.date(1970, 1, 1)


def day_of_ns(ts_ns: int) -> dt.date:
    return EPOCH_DAY + dt.timedelta(days=ts_ns // NS_PER_DAY)


# (table, day) pairs remembered: four tables a day would otherwise add up for
# as long as a connection lives (months), more with data spread over many days.
# Past the bound the cache starts over: each day in use costs one idempotent
# call again.
KNOWN_PARTITIONS_MAX = 1024


class PartitionCache:
    """Remembers which (table, day) partitions exist, per connection lifetime
    (at most ``KNOWN_PARTITIONS_MAX`` of them)."""

    def __init__(self) -> None:
        self._known: set[tuple[str, dt.date]] = set()

    def __len__(self) -> int:
        return len(self._known)

    def ensure(self, conn: psycopg.Connection, table: str, days: Iterable[dt.date]) -> None:
        for day in days:
            if (table, day) in self._known:
                continue
            conn.execute("SELECT mdagent_ensure_day_partition(%s::regclass, %s)", (table, day))
            if len(self._known) >= KNOWN_PARTITIONS_MAX:
                self._known.clear()
            self._known.add((table, day))

    def forget(self) -> None:
        """After a rollback the partition may not exist after all."""
        self._known.clear()


def ensure_days_ahead(conn: psycopg.Connection, today: dt.date, days_ahead: int) -> None:
    for table in PARTITIONED_TABLES:
        for offset in range(days_ahead + 1):
            conn.execute(
                "SELECT mdagent_ensure_day_partition(%s::regclass, %s)",
                (table, today + dt.timedelta(days=offset)),
            )


def drop_older_than(conn: psycopg.Connection, cutoff: dt.date) -> list[str]:
    """Drop day partitions entirely before ``cutoff`` (retention). Returns their names."""
    dropped = []
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = ANY(%s)",
        (list(PARTITIONED_TABLES),),
    ).fetchall()
    for (name,) in rows:
        suffix = name.rpartition("_p")[2]
        if len(suffix) != 8 or not suffix.isdigit():
            continue
        day = dt.date(int(suffix[:4]), int(suffix[4:6]), int(suffix[6:]))
        if day < cutoff:
            conn.execute(f'DROP TABLE IF EXISTS "{name}"')
            dropped.append(name)
    return dropped
