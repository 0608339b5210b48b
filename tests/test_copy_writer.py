"""The COPY writer against a real PostgreSQL: exactly once, exact values, never a lost batch."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import psycopg
import pytest

from mdagent.db import copy_writer
from mdagent.db.copy_writer import CopyWriter
from mdagent.errors import DatabaseUnavailable
from mdagent.pipeline.batches import WriteBatch
from mdagent.records import Candle, DeadLetter, Gap, Quote, RawFrame, StreamControl, Trade

DAY_NS = 86_400 * 10**9
BASE_NS = 1_718_000_000_000_000_000  # 2024-06-10 06:13:20 UTC
UTC = dt.UTC


def trade(i: int, *, ts_ns: int | None = None, **kw: Any) -> Trade:
    fields: dict[str, Any] = {
        "provider": "binance",
        "symbol": "BTCUSDT",
        "channel": "trade",
        "trade_id": str(i),
        "seq": i,
        "ts_ns": BASE_NS + i * 1_000_000 if ts_ns is None else ts_ns,
        "price": "67123.45000000",
        "size": "0.00123000",
        "received_ns": BASE_NS + i * 1_000_000 + 5_000,
        "is_buyer_maker": True,
    }
    fields.update(kw)
    return Trade(**fields)


def quote(i: int, **kw: Any) -> Quote:
    fields: dict[str, Any] = {
        "provider": "polygon",
        "symbol": "AAPL",
        "channel": "Q",
        "seq": i,
        "ts_ns": BASE_NS + i * 1_000_000,
        "bid_price": "189.1200",
        "bid_size": "100",
        "ask_price": "189.1300",
        "ask_size": "200",
        "received_ns": BASE_NS + i * 1_000_000 + 7_000,
        "indicators": (1, 604),
    }
    fields.update(kw)
    return Quote(**fields)


def candle(minute: int, event: int, *, final: bool = False, close: str = "10.5") -> Candle:
    open_ns = BASE_NS // 60_000_000_000 * 60_000_000_000 + minute * 60_000_000_000
    return Candle(
        provider="binance",
        symbol="BTCUSDT",
        channel="kline_1m",
        interval="1m",
        open_ts_ns=open_ns,
        close_ts_ns=open_ns + 59_999_000_000,
        open="10.0",
        high="11.0",
        low="9.5",
        close=close,
        volume="3.25",
        received_ns=open_ns + event,
        final=final,
        event_ts_ns=open_ns + event,
        trade_count=7,
    )


def batch_of(*records: Any) -> WriteBatch:
    batch = WriteBatch()
    batch.add(records)
    return batch


@pytest.fixture
def db(fresh_db_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(fresh_db_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def writer(fresh_db_dsn: str) -> Iterator[CopyWriter]:
    w = CopyWriter(fresh_db_dsn)
    try:
        yield w
    finally:
        w.close()


def count(db: psycopg.Connection, table: str) -> int:
    row = db.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def kill_backend_of(db: psycopg.Connection, writer: CopyWriter) -> None:
    conn = writer._conn
    assert conn is not None
    db.execute("SELECT pg_terminate_backend(%s, 5000)", (conn.info.backend_pid,))


# -- values ---------------------------------------------------------------


def test_exact_decimals_and_full_timestamp_precision(
    writer: CopyWriter, db: psycopg.Connection
) -> None:
    ns = 1_718_000_000_123_456_789  # Polygon REST: nanoseconds
    t = trade(
        1,
        ts_ns=ns,
        received_ns=ns + 1_234_567,
        price="0.00000001",
        size="123456789012345678901234567890.123456789000",
        conditions=(12, 37),
        exchange=4,
        tape=3,
    )
    result = writer.write(batch_of(t))
    assert (result.trades_inserted, result.slow_path) == (1, False)

    row = db.execute(
        "SELECT price::text, size::text, ts_ns, ts, received_at, conditions, exchange, tape FROM trades"
    ).fetchone()
    assert row == (
        "0.00000001",
        "123456789012345678901234567890.123456789000",
        ns,
        dt.datetime(2024, 6, 10, 6, 13, 20, 123_000, tzinfo=UTC),  # truncated to ms
        dt.datetime(2024, 6, 10, 6, 13, 20, 124_691, tzinfo=UTC),  # us precision
        [12, 37],
        4,
        3,
    )


def test_quotes_and_raw_frames_round_trip(writer: CopyWriter, db: psycopg.Connection) -> None:
    raw = RawFrame("polygon", "stocks", '{"ev":"Q"}', BASE_NS + 42_000)
    result = writer.write(batch_of(quote(1), raw))
    assert (result.quotes_inserted, result.raw_inserted) == (1, 1)
    assert db.execute(
        "SELECT bid_price::text, ask_size::text, indicators, seq FROM quotes"
    ).fetchone() == (
        "189.1200",
        "200",
        [1, 604],
        1,
    )
    assert db.execute(
        "SELECT provider, source, payload, received_at FROM trades_raw"
    ).fetchone() == (
        "polygon",
        "stocks",
        '{"ev":"Q"}',
        dt.datetime(2024, 6, 10, 6, 13, 20, 42, tzinfo=UTC),
    )


# -- exactly once ---------------------------------------------------------


def test_websocket_ms_and_rest_ns_trade_share_one_row(
    writer: CopyWriter, db: psycopg.Connection
) -> None:
    ws = trade(7, ts_ns=1_718_000_000_123_000_000)  # stream: ms
    rest = trade(7, ts_ns=1_718_000_000_123_456_789)  # REST: ns, same trade
    writer.write(batch_of(ws))
    result = writer.write(batch_of(rest))
    assert (result.trades_inserted, result.trades_duplicate, result.slow_path) == (0, 1, True)
    assert db.execute("SELECT ts_ns FROM trades").fetchall() == [(1_718_000_000_123_000_000,)]


def test_duplicates_inside_one_batch_do_not_fail_it(
    writer: CopyWriter, db: psycopg.Connection
) -> None:
    result = writer.write(batch_of(trade(1), trade(2), trade(1), quote(5), quote(5), quote(6)))
    assert result.slow_path is False
    assert (result.trades_inserted, result.trades_duplicate) == (2, 1)
    assert (result.quotes_inserted, result.quotes_duplicate) == (2, 1)
    assert count(db, "trades") == 2
    assert count(db, "quotes") == 2


def test_duplicate_of_stored_rows_takes_slow_path_and_keeps_the_rest(
    writer: CopyWriter, db: psycopg.Connection
) -> None:
    writer.write(batch_of(*(trade(i) for i in range(10)), quote(1)))
    batch = batch_of(
        *(trade(i) for i in range(5, 15)),
        quote(1),
        quote(2),
        candle(0, 1),
        RawFrame("binance", "btcusdt@trade", "{}", BASE_NS),
        DeadLetter("binance", "btcusdt@trade", "bad json", "{", BASE_NS),
        Gap("binance", "BTCUSDT", "trade", "reconnect", from_seq=20, to_seq=30),
    )
    result = writer.write(batch)
    assert result.slow_path is True
    assert (result.trades_inserted, result.trades_duplicate) == (5, 5)
    assert (result.quotes_inserted, result.quotes_duplicate) == (1, 1)
    assert (result.candles_written, result.raw_inserted, result.gaps_inserted) == (1, 1, 1)
    assert result.dead_letters == 1
    assert count(db, "trades") == 15
    assert count(db, "quotes") == 2
    assert count(db, "candles") == 1
    assert count(db, "trades_raw") == 1
    assert count(db, "dead_letter") == 1
    assert count(db, "fetch_jobs") == 1
    assert writer.load_offsets()[("binance", "BTCUSDT", "trade")] == (14, trade(14).ts_ns)


# -- offsets and gaps -----------------------------------------------------


def test_offsets_only_advance(writer: CopyWriter) -> None:
    key = ("binance", "BTCUSDT", "trade")
    first = WriteBatch(offsets={key: (100, 5_000)})
    writer.write(first)
    older = WriteBatch(offsets={key: (50, None)})  # a late batch, e.g. backfill
    writer.write(older)
    assert writer.load_offsets() == {key: (100, 5_000)}
    newer = WriteBatch(offsets={key: (None, 9_000)})
    writer.write(newer)
    assert writer.load_offsets() == {key: (100, 9_000)}


def test_offset_seq_follows_the_newest_record_not_the_greatest_seq(writer: CopyWriter) -> None:
    # Polygon q resets per New York session: Monday 19:30 ET (EST) is Tuesday
    # 00:30 UTC, the UTC day of Tuesday's 04:00 ET pre-market (issue 9, input 2).
    key = ("polygon", "QRST", "T")
    monday = 1_796_085_910_000_000_000
    tuesday = 1_796_115_602_000_000_000
    writer.write(WriteBatch(offsets={key: (3_800_050, monday)}))
    writer.write(WriteBatch(offsets={key: (15, tuesday)}))
    assert writer.load_offsets() == {key: (15, tuesday)}
    writer.write(WriteBatch(offsets={key: (3_800_051, monday + 1)}))  # late, older: no effect
    assert writer.load_offsets() == {key: (15, tuesday)}
    writer.write(WriteBatch(offsets={key: (14, tuesday)}))  # a tie in time: the greater seq
    assert writer.load_offsets() == {key: (15, tuesday)}
    # The in-memory merge of batches applies the same rule.
    merged = WriteBatch(offsets={key: (3_800_051, monday)})
    merged.merge(WriteBatch(offsets={key: (12, tuesday - 1000)}))
    merged.merge(WriteBatch(offsets={key: (3_800_052, monday + 5)}))
    assert merged.offsets == {key: (12, tuesday - 1000)}


def test_batch_add_sorts_records_and_tracks_offsets() -> None:
    batch = batch_of(
        trade(5),
        trade(3),
        quote(9),
        candle(0, 1, final=False),
        candle(1, 1, final=True),
        StreamControl("binance", "status"),
        Gap("binance", "BTCUSDT", "trade", "x", from_seq=1, to_seq=2),
    )
    assert (len(batch.trades), len(batch.quotes), len(batch.candles), len(batch.gaps)) == (
        2,
        1,
        2,
        1,
    )
    assert len(batch) == 6
    assert batch.offsets == {
        ("binance", "BTCUSDT", "trade"): (5, trade(5).ts_ns),
        ("polygon", "AAPL", "Q"): (9, quote(9).ts_ns),
        # only the final bar counts: the open one will be re-sent
        ("binance", "BTCUSDT", "kline_1m"): (None, candle(1, 1).open_ts_ns),
    }


def test_gaps_become_pending_fetch_jobs(writer: CopyWriter, db: psycopg.Connection) -> None:
    writer.write(
        batch_of(
            Gap("binance", "BTCUSDT", "trade", "sequence jump", from_seq=101, to_seq=250),
            Gap("polygon", "AAPL", "AM", "backpressure", from_ts_ns=10, to_ts_ns=20),
        )
    )
    rows = db.execute(
        "SELECT provider, channel, kind, status, reason, from_seq, to_seq, from_ts_ns, to_ts_ns"
        " FROM fetch_jobs ORDER BY id"
    ).fetchall()
    assert rows == [
        ("binance", "trade", "gap", "pending", "sequence jump", 101, 250, None, None),
        ("polygon", "AM", "gap", "pending", "backpressure", None, None, 10, 20),
    ]


# -- candles --------------------------------------------------------------


def _candle_state(db: psycopg.Connection) -> list[tuple[Any, ...]]:
    return db.execute("SELECT close::text, final, event_ts_ns FROM candles ORDER BY ts").fetchall()


def test_candle_open_bar_is_updated_by_newer_resend(
    writer: CopyWriter, db: psycopg.Connection
) -> None:
    writer.write(batch_of(candle(0, 100, close="10.1")))
    result = writer.write(batch_of(candle(0, 200, close="10.2")))
    assert result.candles_written == 1
    assert _candle_state(db) == [("10.2", False, candle(0, 200).event_ts_ns)]


def test_candle_older_resend_is_ignored(writer: CopyWriter, db: psycopg.Connection) -> None:
    writer.write(batch_of(candle(0, 200, close="10.2")))
    result = writer.write(batch_of(candle(0, 100, close="10.1")))
    assert (result.candles_written, result.candles_ignored) == (0, 1)
    assert _candle_state(db) == [("10.2", False, candle(0, 200).event_ts_ns)]


def test_final_candle_is_final(writer: CopyWriter, db: psycopg.Connection) -> None:
    writer.write(batch_of(candle(0, 100, close="10.1", final=True)))
    result = writer.write(batch_of(candle(0, 900, close="99")))
    assert (result.candles_written, result.candles_ignored) == (0, 1)
    assert _candle_state(db) == [("10.1", True, candle(0, 100).event_ts_ns)]


def test_several_versions_of_a_bar_in_one_batch(writer: CopyWriter, db: psycopg.Connection) -> None:
    batch = batch_of(
        candle(0, 100, close="10.1"),
        candle(0, 300, close="10.3"),
        candle(0, 200, close="10.2"),  # older than the one before: ignored
        candle(1, 100, close="20.1", final=True),
        candle(1, 500, close="20.5"),  # after the final: ignored
    )
    result = writer.write(batch)
    assert (result.candles_written, result.candles_ignored) == (2, 3)
    assert _candle_state(db) == [
        ("10.3", False, candle(0, 300).event_ts_ns),
        ("20.1", True, candle(1, 100).event_ts_ns),
    ]


def test_candle_values_are_stored_exactly(writer: CopyWriter, db: psycopg.Connection) -> None:
    bar = msgspec.structs.replace(
        candle(0, 123_456_789, close="0.00123000"),
        volume="3.2500",
        quote_volume="12345678901234567890.123456789",
        vwap=None,
        close_ts_ns=candle(0, 0).open_ts_ns + 59_999_123_456,
    )
    writer.write(batch_of(bar))
    row = db.execute(
        "SELECT close::text, volume::text, quote_volume::text, vwap,"
        " (extract(epoch FROM ts) * 1e6)::int8, (extract(epoch FROM close_ts) * 1e6)::int8,"
        " (extract(epoch FROM received_at) * 1e6)::int8, trade_count, event_ts_ns FROM candles"
    ).fetchone()
    assert row == (
        "0.00123000",
        "3.2500",
        "12345678901234567890.123456789",
        None,
        bar.open_ts_ns // 1000,
        bar.close_ts_ns // 1000,
        bar.received_ns // 1000,
        7,
        bar.event_ts_ns,
    )


def test_refused_candle_becomes_a_dead_letter_and_the_rest_commits(
    writer: CopyWriter, db: psycopg.Connection
) -> None:
    bad = msgspec.structs.replace(
        candle(1, 100), symbol="BTC\x00USDT"
    )  # NUL: the server refuses it
    result = writer.write(batch_of(candle(0, 100), bad, trade(1)))
    assert result.slow_path is True
    assert (result.candles_written, result.trades_inserted) == (1, 1)
    assert result.dead_letters == 1
    assert count(db, "candles") == 1
    (reason,) = db.execute("SELECT reason FROM dead_letter").fetchone() or ("",)
    assert "CharacterNotInRepertoire" in reason


# -- partitions -----------------------------------------------------------


def test_rows_land_in_their_day_partition(writer: CopyWriter, db: psycopg.Connection) -> None:
    far = 1_924_992_000_000_000_000  # 2031-01-01 00:00:00 UTC: no partition exists yet
    writer.write(
        batch_of(
            trade(1, ts_ns=far + 5, received_ns=far + DAY_NS),
            quote(1, ts_ns=far),
            RawFrame("binance", "ws", "{}", far + DAY_NS),
        )
    )
    assert db.execute("SELECT tableoid::regclass::text FROM trades").fetchone() == (
        "trades_p20310101",
    )
    assert db.execute("SELECT tableoid::regclass::text FROM quotes").fetchone() == (
        "quotes_p20310101",
    )
    assert db.execute("SELECT tableoid::regclass::text FROM trades_raw").fetchone() == (
        "trades_raw_p20310102",
    )


def test_rows_in_default_partition_move_when_the_day_is_created(
    writer: CopyWriter, db: psycopg.Connection
) -> None:
    # A row written before its day partition existed (e.g. by another tool).
    db.execute(
        "INSERT INTO trades (provider, symbol, channel, trade_id, ts, ts_ns, price, size, received_at)"
        " VALUES ('binance', 'BTCUSDT', 'trade', 'early', '2024-06-10 01:00+00', 1, 1, 1, now())"
    )
    assert db.execute("SELECT tableoid::regclass::text FROM trades").fetchone() == (
        "trades_default",
    )
    writer.write(batch_of(trade(1)))
    assert db.execute("SELECT DISTINCT tableoid::regclass::text FROM trades").fetchall() == [
        ("trades_p20240610",)
    ]
    assert count(db, "trades") == 2


def test_pre_encoded_columns_round_trip_across_batches(
    writer: CopyWriter, db: psycopg.Connection
) -> None:
    """numeric and int4[] go to COPY pre-encoded and cached: repeats, scales, odd shapes."""
    prices = ["0.00123000", "1E+3", "114.125", "0.00123000", "114.1250", "7", "0E-8"]
    trades = [
        trade(i, price=p, conditions=c)
        for i, (p, c) in enumerate(
            zip(prices, [(12, 37), None, (), (14, 41), (12, 37), (1,), None], strict=True)
        )
    ]
    quotes = [
        quote(1, indicators=None, conditions=(1, 17)),
        quote(2),
        quote(3, indicators=(604,), conditions=(0,)),
    ]
    first = writer.write(batch_of(*trades[:4], *quotes))
    second = writer.write(batch_of(*trades[4:]))  # the same values again, from the cache
    assert (first.trades_inserted, first.quotes_inserted, second.trades_inserted) == (4, 3, 3)
    assert not first.slow_path and not second.slow_path
    stored = db.execute("SELECT price::text, conditions FROM trades ORDER BY seq").fetchall()
    assert stored == [
        ("0.00123000", [12, 37]),
        ("1000", None),
        ("114.125", []),
        ("0.00123000", [14, 41]),
        ("114.1250", [12, 37]),
        ("7", [1]),
        ("0.00000000", None),
    ]
    assert db.execute("SELECT indicators, conditions FROM quotes ORDER BY seq").fetchall() == [
        (None, [1, 17]),
        ([1, 604], None),
        ([604], [0]),
    ]


# -- bad input ------------------------------------------------------------


def test_refused_rows_become_dead_letters_and_the_rest_commits(
    writer: CopyWriter, db: psycopg.Connection
) -> None:
    bad = {
        "100": trade(100, symbol="BTC\x00USDT"),  # the server refuses NUL (DataError)
        "101": trade(101, price="12.3.4"),  # not a decimal literal: refused while building
        "102": trade(102, exchange=2**31),  # does not fit int4 (psycopg would wrap it silently)
        "103": trade(103, seq=2**63),  # does not fit bigint (OverflowError in psycopg)
        "104": trade(104, size="1e200000"),  # beyond numeric's binary format (psycopg DataError)
    }
    batch = batch_of(
        *(trade(i) for i in range(50)),
        *bad.values(),
        quote(1),
        quote(2, seq=None),  # quotes.seq is NOT NULL
        DeadLetter("binance", "ws", "bad frame", "nul\x00byte", BASE_NS),
    )
    result = writer.write(batch)
    assert result.slow_path is True
    assert result.trades_inserted == 50
    assert result.quotes_inserted == 1
    # 7 records, plus the offset row that add() took from a refused trade:
    # the NUL symbol (100). (The BTCUSDT offset is the newest trade's, 104:
    # db/offsets.py; the seq beyond bigint of 103 is no longer in it.)
    assert result.rejected == 8
    assert result.dead_letters == 8
    assert count(db, "trades") == 50
    assert count(db, "quotes") == 1
    reasons: dict[str, str] = dict(db.execute("SELECT payload, reason FROM dead_letter").fetchall())
    assert len(reasons) == 8
    by_id = {tid: next(r for p, r in reasons.items() if f'"trade_id":"{tid}"' in p) for tid in bad}
    assert "CharacterNotInRepertoire" in by_id["100"]
    assert "InvalidOperation" in by_id["101"]
    assert "exchange" in by_id["102"]
    assert "OverflowError" in by_id["103"]
    assert "DataError" in by_id["104"]
    assert all(r.startswith("trades: ") for r in by_id.values())
    assert any("NotNullViolation" in r for r in reasons.values())
    assert sum(r.startswith("stream_offsets:") for r in reasons.values()) == 1
    # The refused dead letter is kept as its escaped JSON.
    assert any('"payload":"nul\\u0000byte"' in p for p in reasons)


# -- connection loss ------------------------------------------------------


def test_killed_connection_raises_then_retry_stores_once(
    writer: CopyWriter, db: psycopg.Connection
) -> None:
    writer.write(batch_of(trade(0)))
    kill_backend_of(db, writer)
    batch = batch_of(
        trade(1), trade(2), Gap("binance", "BTCUSDT", "trade", "r", from_seq=1, to_seq=1)
    )
    with pytest.raises(DatabaseUnavailable):
        writer.write(batch)
    result = writer.write(batch)
    assert (result.trades_inserted, result.gaps_inserted) == (2, 1)
    assert count(db, "trades") == 3
    assert count(db, "fetch_jobs") == 1


def test_connection_killed_in_the_middle_of_a_batch(
    writer: CopyWriter, db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_keyed = copy_writer._Stager._keyed
    calls = 0

    def keyed_then_die(self: Any, *args: Any) -> Any:
        nonlocal calls
        calls += 1
        out = real_keyed(self, *args)
        if calls == 1:  # after the trades COPY, before quotes, offsets and COMMIT
            kill_backend_of(db, writer)
        return out

    monkeypatch.setattr(copy_writer._Stager, "_keyed", keyed_then_die)
    batch = batch_of(*(trade(i) for i in range(100)), quote(1), RawFrame("b", "s", "{}", BASE_NS))
    with pytest.raises(DatabaseUnavailable):
        writer.write(batch)
    assert count(db, "trades") == 0
    result = writer.write(batch)
    assert (result.trades_inserted, result.quotes_inserted, result.raw_inserted) == (100, 1, 1)
    assert (count(db, "trades"), count(db, "quotes"), count(db, "trades_raw")) == (100, 1, 1)


def _fail_data_commit(
    writer: CopyWriter, db: psycopg.Connection, *, commit_first: bool
) -> Callable[[], None]:
    """Make the next data COMMIT look lost: the answer never reaches the writer."""
    writer.ping()  # connect now, so the patch lands on the real connection
    conn = writer._conn
    assert conn is not None
    real_commit = conn.commit

    def commit() -> None:
        if writer._pending is None:  # partition DDL, not the data transaction
            real_commit()
            return
        conn.commit = real_commit  # type: ignore[method-assign]
        if commit_first:
            real_commit()
        kill_backend_of(db, writer)
        if not commit_first:
            real_commit()  # raises: the server is gone
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    conn.commit = commit  # type: ignore[method-assign]
    return commit


def test_lost_commit_that_committed_is_not_written_twice(
    writer: CopyWriter, db: psycopg.Connection
) -> None:
    _fail_data_commit(writer, db, commit_first=True)
    batch = batch_of(
        trade(1),
        Gap("binance", "BTCUSDT", "trade", "r", from_seq=1, to_seq=1),
        DeadLetter("binance", "ws", "bad", "{", BASE_NS),
        RawFrame("binance", "ws", "{}", BASE_NS),
    )
    with pytest.raises(DatabaseUnavailable):
        writer.write(batch)
    result = writer.write(batch)
    assert result.recovered is True
    assert result.trades_inserted == 1
    for table in ("trades", "fetch_jobs", "dead_letter", "trades_raw"):
        assert count(db, table) == 1, table


def test_lost_commit_that_aborted_is_written_on_retry(
    writer: CopyWriter, db: psycopg.Connection
) -> None:
    _fail_data_commit(writer, db, commit_first=False)
    batch = batch_of(trade(1), Gap("binance", "BTCUSDT", "trade", "r", from_seq=1, to_seq=1))
    with pytest.raises(DatabaseUnavailable):
        writer.write(batch)
    assert count(db, "trades") == 0
    result = writer.write(batch)
    assert (result.recovered, result.slow_path, result.trades_inserted) == (False, False, 1)
    assert (count(db, "trades"), count(db, "fetch_jobs")) == (1, 1)


def test_unreachable_server_raises_database_unavailable(tmp_path: Any) -> None:
    writer = CopyWriter(f"host={tmp_path} port=1 dbname=nothing connect_timeout=1")
    with pytest.raises(DatabaseUnavailable):
        writer.ping()
    with pytest.raises(DatabaseUnavailable):
        writer.write(batch_of(trade(1)))


def test_empty_batch_needs_no_database() -> None:
    assert CopyWriter("host=/nonexistent").write(WriteBatch()).rows == 0


# -- speed ----------------------------------------------------------------

BENCH_ROWS = 50_000
_BARE_COLUMNS = (
    "provider, symbol, channel, trade_id, ts, ts_ns, seq, price, size, is_buyer_maker,"
    " exchange, tape, conditions, trf_id, first_trade_id, last_trade_id, correction, received_at"
)
_BARE_TYPES = [
    "text", "text", "text", "text", "timestamptz", "int8", "int8", "numeric", "numeric", "bool",
    "int4", "int2", "int4[]", "int4", "int8", "int8", "int4", "timestamptz",
]  # fmt: skip


def _bare_rows(trades: list[Trade]) -> list[tuple[Any, ...]]:
    """The same rows built with plain Python and psycopg, no mdagent code."""
    from decimal import Decimal

    epoch = dt.datetime(1970, 1, 1, tzinfo=UTC)
    return [
        (
            t.provider, t.symbol, t.channel, t.trade_id,
            epoch + dt.timedelta(microseconds=t.ts_ns // 1_000_000 * 1000), t.ts_ns, t.seq,
            Decimal(t.price), Decimal(t.size), t.is_buyer_maker, None, None, None, None, None,
            None, None, epoch + dt.timedelta(microseconds=t.received_ns // 1000),
        )
        for t in trades
    ]  # fmt: skip


@pytest.mark.parametrize("path", ["bare", "fast", "slow"])
def test_copy_50k_trades_speed(
    benchmark: Any, fresh_db_dsn: str, db: psycopg.Connection, path: str
) -> None:
    """Rows/s of the fast path, the slow path (after a failed fast attempt) and bare COPY.

    Disabled by default (``--benchmark-disable``): it then runs once as a
    correctness test. ``pytest --benchmark-enable -k speed`` for the figures.
    """
    benchmark.group = f"COPY {BENCH_ROWS} trades"
    trades = [trade(i, price=f"{60000 + i % 500}.{i % 97:02d}") for i in range(BENCH_ROWS)]
    batch = batch_of(*trades)
    bare_rows = _bare_rows(trades)
    writer = CopyWriter(fresh_db_dsn)
    bare = psycopg.connect(fresh_db_dsn)
    db.execute("SELECT mdagent_ensure_day_partition('trades', '2024-06-10')")
    results: list[Any] = []

    def setup() -> tuple[tuple[()], dict[str, Any]]:
        db.execute("TRUNCATE trades, stream_offsets")
        if path == "slow":  # the last row is already stored: a conflict at the very end
            writer.write(batch_of(trades[-1]))
        return (), {}

    def run() -> None:
        if path == "bare":
            with (
                bare.cursor() as cur,
                cur.copy(f"COPY trades ({_BARE_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy,
            ):
                copy.set_types(_BARE_TYPES)
                for row in bare_rows:
                    copy.write_row(row)
            bare.commit()
        else:
            results.append(writer.write(batch))

    try:
        benchmark.pedantic(run, setup=setup, rounds=1 if benchmark.disabled else 5)
    finally:
        writer.close()
        bare.close()
    assert count(db, "trades") == BENCH_ROWS
    if path != "bare":
        assert results[-1].slow_path is (path == "slow")
        assert results[-1].trades_inserted == BENCH_ROWS - (path == "slow")
    if not benchmark.disabled:
        benchmark.extra_info["rows_per_s"] = round(BENCH_ROWS / benchmark.stats.stats.mean)
