"""When the replacement may take over (pipeline/rotation.py Overlap), on records alone."""

from __future__ import annotations

from mdagent.pipeline.rotation import Overlap
from mdagent.records import Trade


def trade(symbol: str, seq: int) -> Trade:
    return Trade(
        provider="binance",
        symbol=symbol,
        channel="trade",
        trade_id=str(seq),
        seq=seq,
        price="1",
        size="1",
        ts_ns=0,
        received_ns=0,
    )


def test_covered_once_the_old_reaches_the_replacements_first_seq_on_every_stream() -> None:
    overlap = Overlap()
    overlap.old_delivered([trade("A", 10), trade("B", 5)])
    overlap.new_delivered([trade("A", 12)])
    # A: the old stopped at 10, the new began at 12 (11 would be lost); B: not on the new yet.
    assert overlap.waiting_for() == ["A:trade", "B:trade"]
    overlap.old_delivered([trade("A", 11), trade("A", 12)])
    overlap.new_delivered([trade("B", 5)])
    assert overlap.covered()


def test_a_stream_only_the_replacement_delivered_waits_for_the_old() -> None:
    overlap = Overlap()
    overlap.new_delivered([trade("A", 3)])
    assert overlap.waiting_for() == ["A:trade"]
    overlap.old_delivered([trade("A", 7)])  # the old was ahead: the new repeats 3..7
    assert overlap.covered()


def test_a_stream_the_old_lost_is_not_waited_for_on_the_old() -> None:
    """A subscription the venue dropped on the old connection (streams.py): the
    replacement alone brings it; the other streams still need their overlap."""
    overlap = Overlap(missing_on_old=[("B", "trade")])
    overlap.new_delivered([trade("B", 40), trade("A", 12)])
    assert overlap.waiting_for() == ["A:trade"]
    overlap.old_delivered([trade("A", 12)])
    assert overlap.covered()
