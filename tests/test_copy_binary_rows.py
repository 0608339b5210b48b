"""copy_binary_rows: the writer's COPY stream, checked value by value in a real PostgreSQL."""

from __future__ import annotations

import psycopg
import pytest

from mdagent.db.copy_rows import (
    COPY_CHUNK_BYTES,
    copy_binary_rows,
    encode_numeric,
    int4_array,
    register_encoded_dumpers,
)

SQL = "COPY t (id, name, price, conds, ts) FROM STDIN (FORMAT BINARY)"
TYPES = ["int8", "text", "numeric", "int4[]", "int8"]


def _copy(conn: psycopg.Connection, rows: list[tuple[object, ...]], by_row: bool) -> None:
    cur = conn.cursor()
    register_encoded_dumpers(cur.adapters)
    with cur.copy(SQL) as copy:
        copy.set_types(TYPES)
        if by_row:
            for row in rows:
                copy.write_row(row)
        else:
            copy_binary_rows(copy, rows)


@pytest.fixture
def conn(fresh_db_dsn: str) -> psycopg.Connection:
    c = psycopg.connect(fresh_db_dsn)
    c.execute(
        "CREATE TEMP TABLE t (id int8 PRIMARY KEY, name text, price numeric, conds int4[], ts int8)"
    )
    return c


def _rows(n: int) -> list[tuple[object, ...]]:
    literals = ["0.00123000", "114.1250000000000000001", "-7", "1e-3", "NaN"]
    return [
        (
            i,
            f"sym-{i}-é" if i % 3 else None,
            encode_numeric(literals[i % len(literals)]),
            int4_array((i % 4, -(2**31), 2**31 - 1) if i % 2 else None),
            -(2**63) + i,
        )
        for i in range(n)
    ]


def test_rows_are_stored_exactly_as_write_row_stores_them(conn: psycopg.Connection) -> None:
    # Enough rows for several COPY_CHUNK_BYTES chunks, and the same rows by write_row.
    rows = _rows(20_000)
    assert sum(len(str(r)) for r in rows) > 3 * COPY_CHUNK_BYTES
    _copy(conn, rows, by_row=False)
    ours = conn.execute("SELECT id, name, price::text, conds, ts FROM t ORDER BY id").fetchall()
    conn.execute("TRUNCATE t")
    _copy(conn, rows, by_row=True)
    theirs = conn.execute("SELECT id, name, price::text, conds, ts FROM t ORDER BY id").fetchall()
    assert ours == theirs and len(ours) == 20_000
    assert ours[1] == (
        1,
        "sym-1-é",
        "114.1250000000000000001",
        [1, -(2**31), 2**31 - 1],
        -(2**63) + 1,
    )
    assert ours[0] == (0, None, "0.00123000", None, -(2**63))
    assert [r[2] for r in ours[2:5]] == ["-7", "0.001", "NaN"]


def test_no_rows_is_an_empty_copy(conn: psycopg.Connection) -> None:
    _copy(conn, [], by_row=False)
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_a_refused_value_raises_and_stores_nothing(conn: psycopg.Connection) -> None:
    rows = _rows(10)
    rows[5] = (5, "x", "not pre-encoded", None, 0)  # a str where numeric bytes belong
    with pytest.raises(TypeError):
        _copy(conn, rows, by_row=False)
    conn.rollback()
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS t "
        "(id int8 PRIMARY KEY, name text, price numeric, conds int4[], ts int8)"
    )
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_a_psycopg_without_the_row_formatter_falls_back_to_write_row(
    conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast path uses psycopg's private row formatter; without it the same rows go by write_row."""
    from mdagent.db import copy_rows

    monkeypatch.setattr(copy_rows, "format_row_binary", None)
    rows = _rows(3_000)
    _copy(conn, rows, by_row=False)
    stored = conn.execute("SELECT id, name, price::text FROM t ORDER BY id").fetchall()
    assert len(stored) == 3_000 and stored[1] == (1, "sym-1-é", "114.1250000000000000001")
