"""Properties over generated tapes: stored set == distinct records sent (issue 9).

Each example plays a generated tape through the real parser, normalizer and
COPY writer into PostgreSQL, with restarts (a new normalizer loaded from the
committed offsets, as a restarted agent builds it) and reconnects at random
points. It then asserts:

- the trades (and quotes) stored are exactly the distinct records sent, by
  natural key, once each;
- ``duplicates_dropped`` counts only repeats: a record is never dropped unless
  a record with its natural key was stored (a drop of a key never stored
  would make the stored set miss it; a drop of more records than there are
  repeats would too).

Polygon tapes repeat keys, share and reverse ``q`` and cross New York session
resets in EST and EDT; the dedup window is made tiny so that repeats older
than it reach the database's natural key (the writer's slow path).
Binance tapes re-send trades around reconnects and restarts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import cast

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdagent.config import SourceConfig
from mdagent.db.copy_writer import CopyWriter
from mdagent.pipeline.batches import FrameBatch
from mdagent.pipeline.dedup import KeyBudget
from mdagent.pipeline.metrics import Metrics
from mdagent.pipeline.normalizer import Normalizer
from mdagent.providers.base import Parser
from mdagent.providers.binance.sansio import BinanceParser
from mdagent.providers.polygon.sansio import PolygonParser

MS = 1_000_000
# Session resets around New York midnight, where UTC dates mislead:
# EST 2026-01-12 19:30 ET = 01-13 00:30 UTC; 01-13 04:00 ET = 09:00 UTC.
# EDT 2026-07-13 19:30 ET = 23:30 UTC;       07-14 04:00 ET = 08:00 UTC.
SESSION_EDGES_MS = [1_768_264_200_000, 1_768_294_800_000, 1_784_071_800_000, 1_784_102_400_000]

POLYGON = SourceConfig(provider="polygon", symbols=("QRST",), channels=("T", "Q"), api_key_env="K")
BINANCE = SourceConfig(provider="binance", symbols=("BTCUSDT",), channels=("trade",))


@pytest.fixture(scope="module")
def writer(db_dsn: str) -> Iterator[CopyWriter]:
    w = CopyWriter(db_dsn)
    try:
        yield w
    finally:
        w.close()


def reset(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE trades, quotes, stream_offsets, dead_letter, fetch_jobs")


def play(
    writer: CopyWriter,
    source: SourceConfig,
    parser: Parser,
    frames: list[bytes],
    restarts: set[int],
    reconnects: set[int],
    *,
    window: int | None = None,
) -> float:
    """Play ``frames``; a restart or reconnect before the frames at those indexes.

    Returns the duplicates the normalizers dropped in total.
    """
    dropped = 0.0
    normalizer: Normalizer | None = None
    metrics = Metrics()
    for index, frame in enumerate(frames):
        if normalizer is None or index in restarts:
            if normalizer is not None:
                dropped += _dropped(metrics)
            metrics = Metrics()
            normalizer = Normalizer(metrics, writer.load_offsets())
            if window is not None:
                normalizer.key_budget = KeyBudget(total=window, most=window, least=window)
        resumed = 1 if index in reconnects else None
        batch = FrameBatch(source, parser, [(frame, 2_000_000_000_000 * MS + index)], resumed)
        result = writer.write(normalizer.normalize(batch))
        assert result.dead_letters == 0
    return dropped + _dropped(metrics)


def _dropped(metrics: Metrics) -> float:
    total = 0.0
    for family in metrics.duplicates_dropped.collect():
        total += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return total


# -- Polygon -----------------------------------------------------------------------------------

# A trade's natural key: (exchange, id) and its time in ms; a quote's: (q, time).
_trade = st.tuples(
    st.sampled_from([4, 12]),
    st.integers(1, 40),
    st.sampled_from(SESSION_EDGES_MS),
    st.integers(0, 3),
    st.integers(1, 6),  # q: small, so shared, repeated and going backwards
)
_quote = st.tuples(st.integers(1, 8), st.sampled_from(SESSION_EDGES_MS), st.integers(0, 3))


@st.composite
def polygon_tapes(
    draw: st.DrawFn,
) -> tuple[list[bytes], set[tuple[str, int]], set[tuple[int, int]]]:
    trades = draw(st.lists(_trade, max_size=25, unique_by=lambda t: (t[0], t[1], t[2] + t[3])))
    quotes = draw(st.lists(_quote, max_size=10, unique_by=lambda q: (q[0], q[1] + q[2])))
    events = [
        {"ev": "T", "sym": "QRST", "i": str(i), "x": x, "p": 10.5, "s": 100, "t": t + dt, "q": q}
        for x, i, t, dt, q in trades
    ] + [
        {"ev": "Q", "sym": "QRST", "bp": 1, "bs": 1, "ap": 2, "as": 1, "t": t + dt, "q": q}
        for q, t, dt in quotes
    ]
    events.sort(key=lambda e: cast(int, e["t"]))
    # Re-sends: copies of events at random later (or earlier) places.
    for source, place in draw(st.lists(st.tuples(st.integers(0, 99), st.integers(0, 99)))):
        if events:
            events.insert(place % (len(events) + 1), events[source % len(events)])
    sizes = draw(st.lists(st.integers(1, 3), min_size=len(events), max_size=len(events)))
    frames, at = [], 0
    for size in sizes:
        if at < len(events):
            frames.append(json.dumps(events[at : at + size]).encode())
            at += size
    trade_keys = {(f"{x}::{i}", t + dt) for x, i, t, dt, _q in trades}
    quote_keys = {(q, t + dt) for q, t, dt in quotes}
    return frames, trade_keys, quote_keys


@given(tape=polygon_tapes(), cuts=st.sets(st.integers(0, 40)), window=st.sampled_from([2, 4096]))
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_polygon_stored_set_is_the_distinct_records_sent(
    db_dsn: str,
    writer: CopyWriter,
    tape: tuple[list[bytes], set[tuple[str, int]], set[tuple[int, int]]],
    cuts: set[int],
    window: int,
) -> None:
    reset(db_dsn)
    frames, trade_keys, quote_keys = tape
    restarts = {c for c in cuts if c % 2}
    reconnects = cuts - restarts
    dropped = play(writer, POLYGON, PolygonParser(), frames, restarts, reconnects, window=window)
    with psycopg.connect(db_dsn) as conn:
        stored_trades = conn.execute(
            "SELECT trade_id, (extract(epoch FROM ts) * 1000)::bigint FROM trades"
        ).fetchall()
        stored_quotes = conn.execute(
            "SELECT seq, (extract(epoch FROM ts) * 1000)::bigint FROM quotes"
        ).fetchall()
    assert sorted(stored_trades) == sorted(trade_keys)  # each once: a list, not a set
    assert sorted(stored_quotes) == sorted(quote_keys)
    sent = sum(len(json.loads(f)) for f in frames)
    assert dropped <= sent - len(trade_keys) - len(quote_keys)


# -- Binance -----------------------------------------------------------------------------------


@st.composite
def binance_tapes(draw: st.DrawFn) -> tuple[list[bytes], list[int]]:
    count = draw(st.integers(1, 30))
    ids = list(range(100, 100 + count))
    # Binance sends a symbol's ids in order (wire-formats.md 1.6); a re-send
    # (a duplicate delivery, a replay around a reconnect) repeats an id
    # already sent.
    resends = draw(st.lists(st.tuples(st.integers(0, count - 1), st.integers(0, count - 1))))
    order = []
    for at, trade_id in enumerate(ids):
        order.append(trade_id)
        order += [ids[min(which, at)] for after, which in resends if after == at]
    frames = [
        json.dumps(
            {
                "stream": "btcusdt@trade",
                "data": {
                    "e": "trade",
                    "E": 1,
                    "s": "BTCUSDT",
                    "t": i,
                    "p": "30000.01",
                    "q": "0.5",
                    "T": 1_764_345_600_000 + i,
                    "m": False,
                    "M": True,
                },
            }
        ).encode()
        for i in order
    ]
    return frames, ids


@given(tape=binance_tapes(), cuts=st.sets(st.integers(0, 60)))
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_binance_stored_set_is_the_distinct_records_sent(
    db_dsn: str, writer: CopyWriter, tape: tuple[list[bytes], list[int]], cuts: set[int]
) -> None:
    reset(db_dsn)
    frames, ids = tape
    restarts = {c for c in cuts if c % 2}
    parser = BinanceParser(symbols=["BTCUSDT"])
    dropped = play(writer, BINANCE, parser, frames, restarts, cuts - restarts)
    with psycopg.connect(db_dsn) as conn:
        stored = [r[0] for r in conn.execute("SELECT trade_id::bigint FROM trades ORDER BY 1")]
    assert stored == ids
    assert dropped <= len(frames) - len(ids)
