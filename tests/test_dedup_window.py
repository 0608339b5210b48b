"""The dedup window keeps marks (time, trade id), never the records themselves, and
only for a minute or so of receive time (its memory reaches a plateau)."""

from __future__ import annotations

from collections.abc import Sequence

from mdagent.config import SourceConfig
from mdagent.pipeline.batches import FrameBatch
from mdagent.pipeline.dedup import GENERATION_NS
from mdagent.pipeline.metrics import Metrics
from mdagent.pipeline.normalizer import Normalizer
from mdagent.records import Quote, Record, Trade

POLYGON = SourceConfig(provider="polygon", symbols=("AAPL",), channels=("T", "Q"), api_key_env="K")
T0 = 1_796_085_000_000_000_000  # a weekday, 2026-12-01 in New York


class ListParser:
    def __init__(self, records: Sequence[Record]) -> None:
        self.records = records

    def parse(self, frame: bytes | str, received_ns: int) -> list[Record]:
        return [self.records[int(frame)]]


def _normalize(
    n: Normalizer, records: Sequence[Record], received_ns: int = 0
) -> tuple[list[Trade], list[Quote]]:
    frames: list[tuple[str | bytes, int]] = [(str(i), received_ns) for i in range(len(records))]
    out = n.normalize(FrameBatch(POLYGON, ListParser(records), frames))
    return out.trades, out.quotes


def _trade(trade_id: str, seq: int, ts_ns: int) -> Trade:
    return Trade("polygon", "AAPL", "T", trade_id, seq, ts_ns, "1.5", "2", 0)


def _quote(seq: int, ts_ns: int) -> Quote:
    return Quote("polygon", "AAPL", "Q", seq, ts_ns, "1", "1", "2", "1", 0)


def _held(n: Normalizer) -> list[object]:
    held: list[object] = []
    for state in n.states.values():
        if state.recent is None:
            continue
        for generation in (state.recent.recent, state.recent.older):
            for value in generation.values():
                held.extend(value if type(value) is list else [value])
    return held


def test_repeats_are_dropped_by_mark_and_no_record_is_held() -> None:
    n = Normalizer(Metrics(), {})
    first: list[Record] = [
        _trade("4::1", 10, T0),
        _trade("4::2", 11, T0 + 1),
        _quote(20, T0),
        _quote(21, T0 + 5),
    ]
    assert _normalize(n, first) == (first[:2], first[2:])
    later: list[Record] = [
        _trade("4::1", 10, T0),  # a re-send: dropped
        _trade("7::9", 10, T0),  # same seq and time, another trade id: kept
        _trade("7::9", 10, T0),  # that one re-sent: dropped (two marks under seq 10)
        _trade("4::2", 11, T0 + 2),  # same seq and id, another time: kept
        _quote(20, T0),  # re-sent: dropped
        _quote(20, T0 + 1),  # same seq, another time: kept
        _quote(21, T0 + 5),  # re-sent: dropped
    ]
    trades, quotes = _normalize(n, later)
    assert trades == [later[1], later[3]]
    assert quotes == [later[5]]
    held = _held(n)
    assert held, "the windows hold marks"
    assert not [m for m in held if isinstance(m, Trade | Quote)]
    # Quotes are kept by time, trades by (time, id).
    assert T0 + 5 in held and (T0, "7::9") in held


def _window_size(n: Normalizer) -> int:
    return sum(len(s.recent) for s in n.states.values() if s.recent is not None)


def test_a_quiet_stream_keeps_the_keys_of_the_last_minute_not_of_the_whole_run() -> None:
    # One quote a second for 20 minutes of receive time: far below the
    # stream's key bound (4,096), so only the age of a generation can keep
    # the window from holding every key of the run (memory rising for as
    # long as the agent runs).
    n = Normalizer(Metrics(), {})
    second = 1_000_000_000
    received0 = 1_800_000_000 * second
    for i in range(1_200):
        _normalize(n, [_quote(1_000 + i, T0 + i * second)], received0 + i * second)
        # Kept at least one generation, at most two (and the batch in hand).
        assert _window_size(n) <= 2 * GENERATION_NS // second + 1
    assert _window_size(n) >= GENERATION_NS // second
    # A re-send within a generation is still caught ...
    now = received0 + 1_200 * second
    assert _normalize(n, [_quote(2_199, T0 + 1_199 * second)], now) == ([], [])
    # ... one older than two generations goes on to the database's key.
    old = _quote(1_000, T0)
    assert _normalize(n, [old], now) == ([], [old])


def test_a_clock_stepped_back_does_not_stop_the_window_turning() -> None:
    n = Normalizer(Metrics(), {})
    second = 1_000_000_000
    received0 = 1_800_000_000 * second
    _normalize(n, [_quote(1, T0)], received0)
    # The clock steps back an hour, then runs on: generations still turn.
    back = received0 - 3_600 * second
    for i in range(300):
        _normalize(n, [_quote(2 + i, T0 + (1 + i) * second)], back + i * second)
        assert _window_size(n) <= 2 * GENERATION_NS // second + 1
