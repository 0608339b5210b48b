"""The normalizer's dedup and gap rules, on records from a stub parser (no I/O)."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from mdagent.config import SourceConfig
from mdagent.pipeline.batches import FrameBatch, WriteBatch
from mdagent.pipeline.dedup import KeyBudget
from mdagent.pipeline.metrics import Metrics
from mdagent.pipeline.normalizer import Normalizer
from mdagent.records import Candle, DeadLetter, Gap, Quote, Record, Trade

BINANCE = SourceConfig(
    provider="binance", symbols=("BTCUSDT",), channels=("trade", "bookTicker", "kline_1m")
)
POLYGON = SourceConfig(provider="polygon", symbols=("AAPL",), channels=("T", "AM"), api_key_env="K")
MS = 1_000_000
MINUTE = 60_000 * MS


class ListParser:
    """Frames are indexes into a list of prepared records."""

    def __init__(self, records: Sequence[Record]) -> None:
        self.records = records

    def parse(self, frame: bytes | str, received_ns: int) -> list[Record]:
        return [self.records[int(frame)]]


def run(
    normalizer: Normalizer,
    source: SourceConfig,
    records: Sequence[Record],
    resumed_after_ns: int | None = None,
) -> WriteBatch:
    batch = FrameBatch(
        source, ListParser(records), [(str(i), 0) for i in range(len(records))], resumed_after_ns
    )
    return normalizer.normalize(batch)


def trade(
    seq: int, ts_ns: int = 1_700_000_000_000 * MS, provider: str = "binance", channel: str = "trade"
) -> Trade:
    symbol = "BTCUSDT" if provider == "binance" else "AAPL"
    return Trade(provider, symbol, channel, str(seq), seq, ts_ns, "1.5", "2", 0)


def quote(seq: int, ts_ns: int) -> Quote:
    return Quote("binance", "BTCUSDT", "bookTicker", seq, ts_ns, "1", "1", "2", "1", ts_ns)


def bar(open_ns: int, final: bool, provider: str = "binance") -> Candle:
    symbol, channel = ("BTCUSDT", "kline_1m") if provider == "binance" else ("AAPL", "AM")
    return Candle(
        provider,
        symbol,
        channel,
        "1m",
        open_ns,
        open_ns + MINUTE - 1,
        "1",
        "1",
        "1",
        "1",
        "1",
        0,
        final,
        open_ns,
    )


def test_duplicates_dropped_and_sequence_jump_is_a_gap() -> None:
    n = Normalizer(Metrics(), {})
    out = run(n, BINANCE, [trade(10), trade(11), trade(11), trade(10), trade(15), trade(16)])
    assert [t.seq for t in out.trades] == [10, 11, 15, 16]
    assert out.gaps == [Gap("binance", "BTCUSDT", "trade", "sequence jump", from_seq=12, to_seq=14)]
    assert out.offsets[("binance", "BTCUSDT", "trade")] == (16, trade(16).ts_ns)


def test_restart_resumes_from_committed_offsets() -> None:
    n = Normalizer(Metrics(), {("binance", "BTCUSDT", "trade"): (100, 5)})
    out = run(n, BINANCE, [trade(99), trade(100), trade(104)])
    assert [t.seq for t in out.trades] == [104]
    assert [(g.from_seq, g.to_seq) for g in out.gaps] == [(101, 103)]


def test_reconnect_silence_is_a_time_gap_for_non_contiguous_channels() -> None:
    n = Normalizer(Metrics(), {})
    run(n, BINANCE, [quote(5, 1_000), quote(9, 2_000)])
    out = run(n, BINANCE, [quote(9, 2_500), quote(20, 9_000)], resumed_after_ns=2_000)
    assert [q.seq for q in out.quotes] == [20]  # 9 is a replay
    assert out.gaps == [
        Gap("binance", "BTCUSDT", "bookTicker", "reconnect", from_ts_ns=2_000, to_ts_ns=9_000)
    ]


def polygon_trade(trade_id: str, seq: int, ts_ns: int) -> Trade:
    return Trade("polygon", "AAPL", "T", trade_id, seq, ts_ns, "1.5", "2", 0)


def test_polygon_dedup_is_by_natural_key_never_by_sequence() -> None:
    n = Normalizer(Metrics(), {})
    t0 = 1_796_085_000_000 * MS
    sent = [
        polygon_trade("12::1", 88001, t0),
        polygon_trade("12::2", 88001, t0),  # same q, another trade (issue 9, input 1)
        polygon_trade("12::3", 87000, t0 + MS),  # q backwards
        polygon_trade("12::1", 88001, t0),  # a re-send: same natural key
        polygon_trade("12::1", 88001, t0 + MS),  # same id, other ms: another key
    ]
    out = run(n, POLYGON, sent)
    assert out.trades == [sent[0], sent[1], sent[2], sent[4]]
    assert out.gaps == []  # Polygon sequences have holes by design
    # The offset is the newest record's (seq, time); a tie in time keeps the greater seq.
    assert out.offsets[("polygon", "AAPL", "T")] == (88001, t0 + MS)


def test_polygon_restart_offset_never_makes_the_next_session_look_old() -> None:
    # Monday 19:30 ET (EST) is Tuesday 00:30 UTC, the UTC day of Tuesday's
    # 04:00 ET session, where q starts again from 1 (issue 9, input 2).
    monday = 1_796_085_910_000 * MS
    n = Normalizer(Metrics(), {("polygon", "AAPL", "T"): (3_800_050, monday)})
    tuesday = [polygon_trade("4::11", 12, 1_796_115_601_000 * MS)]
    out = run(n, POLYGON, tuesday)
    assert out.trades == tuesday
    assert out.offsets[("polygon", "AAPL", "T")] == (12, tuesday[0].ts_ns)


def test_a_parser_that_raises_costs_one_dead_letter_not_the_pipeline() -> None:
    class Raising:
        def parse(self, frame: bytes | str, received_ns: int) -> list[Record]:
            if frame == "boom":
                raise RecursionError("maximum recursion depth exceeded")
            return [trade(int(frame))]

    n = Normalizer(Metrics(), {})
    batch = FrameBatch(BINANCE, Raising(), [("1", 7), ("boom", 8), ("2", 9)])
    out = n.normalize(batch)
    assert [t.seq for t in out.trades] == [1, 2]
    [letter] = out.dead
    assert letter.reason == "parser raised RecursionError: maximum recursion depth exceeded"
    assert (letter.payload, letter.received_ns, letter.source) == ("boom", 8, BINANCE.key)


def test_kline_missing_bars_and_missing_final_are_gaps() -> None:
    n = Normalizer(Metrics(), {})
    t0 = 1_700_000_000_000 * MS
    out = run(
        n,
        BINANCE,
        [
            bar(t0, False),
            bar(t0, True),
            bar(t0 + MINUTE, False),
            # the final of t0+1m never came, and t0+2m is missing
            bar(t0 + 3 * MINUTE, False),
        ],
    )
    assert len(out.candles) == 4
    assert out.gaps == [
        Gap(
            "binance",
            "BTCUSDT",
            "kline_1m",
            "missing bars",
            from_ts_ns=t0 + MINUTE,
            to_ts_ns=t0 + 3 * MINUTE - 1,
        )
    ]
    # Only final bars advance the offset: an open bar will be re-sent.
    assert out.offsets[("binance", "BTCUSDT", "kline_1m")] == (None, t0)


def test_polygon_bars_have_no_interval_gaps_but_reconnects_do() -> None:
    n = Normalizer(Metrics(), {})
    t0 = 1_700_000_000_000 * MS
    out = run(n, POLYGON, [bar(t0, False, "polygon"), bar(t0 + 5 * MINUTE, False, "polygon")])
    assert out.gaps == []
    out = run(
        n, POLYGON, [bar(t0 + 9 * MINUTE, False, "polygon")], resumed_after_ns=t0 + 6 * MINUTE
    )
    assert [g.reason for g in out.gaps] == ["reconnect"]


def test_polygon_bars_restart_from_their_offset_with_a_reconnect_gap() -> None:
    """Polygon bars are never final; the newest open time is still their offset, so
    the bars that opened while the agent was down are a gap after a restart."""
    t0 = 1_700_000_000_000 * MS
    first = Normalizer(Metrics(), {})
    out = run(first, POLYGON, [bar(t0 + 2 * MINUTE, False, "polygon"), bar(t0, False, "polygon")])
    key = ("polygon", "AAPL", "AM")
    assert out.offsets[key] == (None, t0 + 2 * MINUTE)  # the newest, not the last received

    restarted = Normalizer(Metrics(), {key: out.offsets[key]})
    out = run(restarted, POLYGON, [bar(t0 + 7 * MINUTE, False, "polygon")])
    assert [(g.reason, g.from_ts_ns, g.to_ts_ns) for g in out.gaps] == [
        ("reconnect", t0 + 2 * MINUTE, t0 + 7 * MINUTE - 1)
    ]
    assert out.offsets[key] == (None, t0 + 7 * MINUTE)


def test_resend_of_the_last_bar_after_a_restart_keeps_the_hole_open() -> None:
    """After a restart Polygon may first re-send (correct) the last bar seen; the
    bars that opened meanwhile are still missing until a newer bar shows how many."""
    t0 = 1_700_000_000_000 * MS
    key = ("polygon", "AAPL", "AM")
    restarted = Normalizer(Metrics(), {key: (None, t0)})
    out = run(restarted, POLYGON, [bar(t0, False, "polygon")])
    assert out.gaps == []
    out = run(restarted, POLYGON, [bar(t0 + 6 * MINUTE, False, "polygon")])
    assert [(g.reason, g.from_ts_ns, g.to_ts_ns) for g in out.gaps] == [
        ("reconnect", t0, t0 + 6 * MINUTE - 1)
    ]


def test_dead_letters_pass_through_and_raw_archive() -> None:
    n = Normalizer(Metrics(), {})
    dead = DeadLetter("binance", "btcusdt@trade", "data.p (price): bad", "{}", 0)
    source = SourceConfig(
        provider="binance", symbols=("BTCUSDT",), channels=("trade",), archive_raw=True
    )
    out = run(n, source, [dead, trade(1)])
    assert out.dead == [dead]
    assert [r.payload for r in out.raw] == ["0", "1"]


def test_dedup_windows_stay_within_the_shared_budget() -> None:
    # 40 Polygon streams under a budget of 256 keys: 16 each at most (the
    # floor), checked once per batch, so one batch (here 50 records) on top.
    n = Normalizer(Metrics(), {})
    n.key_budget = KeyBudget(total=256, most=64, least=16)
    t0 = 1_796_085_000_000 * MS
    for batch_no in range(40):
        sent = [
            Trade(
                "polygon",
                f"T{s:02d}",
                "T",
                f"4::{batch_no}-{i}",
                batch_no * 50 + i,
                t0 + i,
                "1",
                "1",
                0,
            )
            for s in range(40)
            for i in range(50)
            if (s + i) % 40 == batch_no % 40 or i < 2
        ]
        source = attrs.evolve(POLYGON, symbols=tuple(f"T{s:02d}" for s in range(40)))
        run(n, source, sent)
    windows = [state.recent for state in n.states.values() if state.recent is not None]
    assert len(windows) == 40
    assert n.key_budget.per_window == 16
    assert all(len(w) <= 16 + 50 for w in windows)
    assert sum(len(w) for w in windows) <= max(256, 16 * 40) + 40 * 50


def test_reconnect_window_starts_at_the_last_event_time_not_its_receive_time() -> None:
    """The window of a reconnect is bounded in the provider's clock: it opens at the
    last event time seen for the stream. The receive time of the last frame lags
    that, and a window opened there misses what the venue stamped in between."""
    n = Normalizer(Metrics(), {})
    t0 = 1_700_000_000_000 * MS
    run(n, POLYGON, [trade(7, t0, "polygon", "T")])
    received = t0 + 80 * MS  # the frame arrived 80 ms after the venue stamped it
    out = run(n, POLYGON, [trade(9, t0 + 500 * MS, "polygon", "T")], resumed_after_ns=received)
    assert out.gaps == [
        Gap("polygon", "AAPL", "T", "reconnect", from_ts_ns=t0, to_ts_ns=t0 + 500 * MS)
    ]


def dropped(metrics: Metrics, provider: str = "binance", channel: str = "trade") -> float:
    value = metrics.duplicates_dropped.labels(provider, channel)._value.get()
    return float(value)


def test_a_late_id_inside_a_recorded_jump_is_passed_on_not_counted_as_a_duplicate() -> None:
    # Binance promises order, but a late id inside a hole this stream jumped
    # over was never seen: dropping it would count a record as a duplicate that
    # was never stored (issue 9: duplicates_dropped only for stored keys).
    metrics = Metrics()
    n = Normalizer(metrics, {})
    out = run(n, BINANCE, [trade(10), trade(11), trade(15), trade(13), trade(11)])
    assert [t.seq for t in out.trades] == [10, 11, 15, 13]
    assert dropped(metrics) == 1  # only the re-sent 11
    # The gap stays recorded (the backfill finds 13 stored) and the offset never moves back.
    assert [(g.from_seq, g.to_seq) for g in out.gaps] == [(12, 14)]
    assert out.offsets[("binance", "BTCUSDT", "trade")] == (15, trade(15).ts_ns)


def test_an_id_before_the_first_one_seen_is_passed_on() -> None:
    # A fresh stream (no committed offset) starts at 100; 99 was never seen.
    metrics = Metrics()
    n = Normalizer(metrics, {})
    out = run(n, BINANCE, [trade(100), trade(99), trade(100)])
    assert [t.seq for t in out.trades] == [100, 99]
    assert dropped(metrics) == 1
