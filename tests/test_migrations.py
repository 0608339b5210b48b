"""Migrations against a real PostgreSQL: tables, idempotence, serialization, partitions."""

from __future__ import annotations

import datetime as dt
import threading

import psycopg
import pytest

from mdagent.db import partitions
from mdagent.db.migrate import available_migrations, migrate
from mdagent.db.partitions import PartitionCache, drop_older_than, ensure_days_ahead

EXPECTED_TABLES = {
    "providers",
    "instruments",
    "trades",
    "quotes",
    "candles",
    "trades_raw",
    "stream_offsets",
    "fetch_jobs",
    "dead_letter",
    "schema_migrations",
}


def test_migrate_creates_every_table_and_twice_is_noop(empty_db_dsn: str) -> None:
    applied = migrate(empty_db_dsn)
    assert applied == [m.name for m in available_migrations()]
    with psycopg.connect(empty_db_dsn) as conn:
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') AND relnamespace = 'public'::regnamespace"
            )
        }
        partitioned = {
            r[0] for r in conn.execute("SELECT relname FROM pg_class WHERE relkind = 'p'")
        }
        recorded = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
    assert tables >= EXPECTED_TABLES
    assert {"trades", "quotes", "candles", "trades_raw"} <= partitioned
    assert migrate(empty_db_dsn) == []
    assert recorded == (len(applied),)


def test_concurrent_migrations_are_serialized(pg_server_dsn: str) -> None:
    with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS mig_race")
        conn.execute("CREATE DATABASE mig_race")
    dsn = psycopg.conninfo.make_conninfo(pg_server_dsn, dbname="mig_race")
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(dsn))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    # Exactly one migrator applied the files; the others found nothing to do.
    assert sorted(len(r) for r in results) == [0, 0, 0, len(available_migrations())]


def _insert_trade(conn: psycopg.Connection, ts: dt.datetime, trade_id: str) -> None:
    conn.execute(
        "INSERT INTO trades (provider, symbol, channel, trade_id, ts, ts_ns, price, size, received_at)"
        " VALUES ('binance', 'BTCUSDT', 'trade', %s, %s, 0, '1.5', '2', now())",
        (trade_id, ts),
    )


def test_partition_routing_and_default_safety_net(db_dsn: str) -> None:
    day = dt.date(2031, 3, 4)
    ts = dt.datetime(2031, 3, 4, 12, 0, tzinfo=dt.UTC)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        # No partition for that day yet: the row lands in the default partition...
        _insert_trade(conn, ts, "1")
        where = conn.execute(
            "SELECT tableoid::regclass::text FROM trades WHERE trade_id = '1'"
        ).fetchone()
        assert where == ("trades_default",)
        # ...and creating the day partition moves it there, nothing lost.
        PartitionCache().ensure(conn, "trades", [day])
        rows = conn.execute("SELECT tableoid::regclass::text, price::text FROM trades").fetchall()
        assert rows == [("trades_p20310304", "1.5")]
        _insert_trade(conn, ts, "2")
        count = conn.execute("SELECT count(*) FROM trades_p20310304").fetchone()
        assert count == (2,)
        # Unique natural key holds across the partitioned table.
        with pytest.raises(psycopg.errors.UniqueViolation):
            _insert_trade(conn, ts, "2")


def test_the_partition_cache_stays_bounded_as_days_go_by(
    db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer's connection lives for months: the (table, day) pairs it remembers must not
    grow with them. (A small bound here; the real one is KNOWN_PARTITIONS_MAX.)"""
    monkeypatch.setattr(partitions, "KNOWN_PARTITIONS_MAX", 4, raising=False)
    cache = PartitionCache()
    first = dt.date(2033, 7, 1)
    days = [first + dt.timedelta(days=i) for i in range(10)]
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        for day in days:
            cache.ensure(conn, "trades", [day])
            assert len(cache) <= 4
        # A day forgotten by the cache is ensured again, harmlessly.
        cache.ensure(conn, "trades", [first])
        names = {
            r[0]
            for r in conn.execute(
                "SELECT relname FROM pg_class WHERE relname LIKE 'trades_p203307%' AND relkind = 'r'"
            )
        }
    assert names == {f"trades_p{d:%Y%m%d}" for d in days}


def test_partitions_ahead_and_retention(db_dsn: str) -> None:
    today = dt.date(2030, 1, 10)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        ensure_days_ahead(conn, today, 2)
        names = {
            r[0]
            for r in conn.execute(
                "SELECT relname FROM pg_class WHERE relname LIKE 'quotes_p2030%' AND relkind = 'r'"
            )
        }
        assert names == {"quotes_p20300110", "quotes_p20300111", "quotes_p20300112"}
        dropped = drop_older_than(conn, dt.date(2030, 1, 11))
        assert "quotes_p20300110" in dropped and "trades_p20300110" in dropped
        assert all(not n.endswith(("20300111", "20300112")) for n in dropped)


def test_concurrent_creators_of_one_partition(db_dsn: str) -> None:
    """Two writers asking for the same new day at once both succeed (it failed with duplicate_table)."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def create(day: dt.date) -> None:
        try:
            with psycopg.connect(db_dsn) as conn:
                barrier.wait()
                PartitionCache().ensure(conn, "quotes", [day])
                conn.commit()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    for offset in range(5):
        day = dt.date(2032, 5, 1) + dt.timedelta(days=offset)
        threads = [threading.Thread(target=create, args=(day,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors


def test_quote_condition_becomes_a_conditions_array(unmigrated_db_dsn: str) -> None:
    """003: quotes stored with the old single ``condition`` keep it, as a one-element
    array, in their day partition and in the default partition alike."""
    earlier = [m for m in available_migrations() if m.version < 3]
    with psycopg.connect(unmigrated_db_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for m in earlier:
            conn.execute(m.sql.encode())
            conn.execute("INSERT INTO schema_migrations VALUES (%s, %s)", (m.version, m.name))
        conn.execute("SELECT mdagent_ensure_day_partition('quotes', '2026-03-03')")
        for seq, day, condition in (
            (1, "2026-03-03", 5),
            (2, "2026-03-03", None),
            (3, "2026-05-01", 9),
        ):
            conn.execute(
                "INSERT INTO quotes (provider, symbol, channel, seq, ts, ts_ns, bid_price,"
                " bid_size, ask_price, ask_size, condition, received_at)"
                " VALUES ('polygon', 'AAPL', 'Q', %s, %s::date, 0, 1, 1, 2, 1, %s, now())",
                (seq, day, condition),
            )
    later = [m.name for m in available_migrations() if m.version >= 3]
    assert migrate(unmigrated_db_dsn) == later  # 003 and any after it
    with psycopg.connect(unmigrated_db_dsn) as conn:
        rows = conn.execute("SELECT seq, conditions FROM quotes ORDER BY seq").fetchall()
        old_column = conn.execute(
            "SELECT count(*) FROM information_schema.columns"
            " WHERE table_name = 'quotes' AND column_name = 'condition'"
        ).fetchone()
    assert rows == [(1, [5]), (2, None), (3, [9])]
    assert old_column == (0,)
