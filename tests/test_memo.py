"""The bounded memos of the hot paths (mdagent/memo.py): what they hold and what they keep.

A 24/7 recorder sees new decimal literals all day (sizes, sub-penny prints);
its memos must stay within their bounds, and a value in use must survive any
number of one-off values (a memo that starts over when full drops it too).
"""

from __future__ import annotations

import pytest

from mdagent import numbers
from mdagent.db import copy_rows
from mdagent.memo import Memo


def _lookup(memo: Memo[int, str], key: int) -> str:
    value = memo.recent.get(key) or memo.recall(key)
    if value is None:
        value = f"v{key}"
        memo.remember(key, value)
    return value


def test_a_memo_holds_at_most_its_limit_and_keeps_the_value_in_use() -> None:
    memo = Memo[int, str](8)
    for key in range(1, 1_000):
        assert _lookup(memo, 0) == "v0"  # the value in use
        assert _lookup(memo, key) == f"v{key}"  # a value seen once
        assert len(memo) <= 8
    assert 0 in memo.recent
    # The one-off values are forgotten a generation after their use.
    assert 5 not in memo.recent and 5 not in memo.older
    assert memo.limit == 8


def test_recall_moves_a_value_back_into_the_recent_generation() -> None:
    memo = Memo[str, str](4)
    for key in ("a", "b", "c"):  # "c" turns the generations: "a", "b" are older
        memo.remember(key, key.upper())
    assert set(memo.older) == {"a", "b"} and set(memo.recent) == {"c"}
    assert memo.recall("a") == "A"
    assert "a" in memo.recent and "a" not in memo.older
    assert memo.recall("zz") is None
    memo.clear()
    assert len(memo) == 0


def test_a_memo_needs_room_for_two_values() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        Memo[int, int](1)


def test_the_literal_memo_stays_bounded_and_keeps_a_recurring_price() -> None:
    numbers._LITERALS.clear()
    limit = numbers.LITERALS_LIMIT
    for i in range(3 * limit):
        assert numbers.number_text("187.25", "p") == "187.25"
        # A fractional size, new every time (Polygon "ds").
        assert numbers.number_text(f"0.{i:07d}1", "ds") == f"0.{i:07d}1"
        assert len(numbers._LITERALS) <= limit
    assert "187.25" in numbers._LITERALS.recent
    # Exponent forms are memoized as their plain text.
    assert numbers.number_text("1.5E+3", "p") == "1500"
    assert numbers._LITERALS.recent["1.5E+3"] == "1500"


def test_the_encoding_memos_stay_bounded_and_keep_a_recurring_value() -> None:
    limit = copy_rows.ENCODINGS_LIMIT
    price = copy_rows.encode_numeric("187.25")
    conditions = copy_rows.int4_array((12, 37))
    for i in range(3 * limit):
        assert copy_rows.encode_numeric("187.25") == price
        assert copy_rows.int4_array((12, 37)) == conditions
        copy_rows.encode_numeric(f"0.{i:07d}1")
        copy_rows.int4_array((i,))
        assert len(copy_rows._numeric_cache) <= limit
        assert len(copy_rows._array_cache) <= limit
    assert "187.25" in copy_rows._numeric_cache.recent
    assert (12, 37) in copy_rows._array_cache.recent
    assert copy_rows.int4_array(None) is None
    # The memo's bytes are the dumper's: a fresh encoding is the same.
    assert copy_rows._encode_numeric("187.25") == price
