"""A bounded memo of recently used values, in two generations.

The hot paths memoize work per distinct value: a decimal literal checked once
(``numbers.number_text``), a numeric or int4[] value encoded once
(``db/copy_rows.py``). Prices sit on a grid and recur all day, so nearly
every lookup hits; sizes and sub-penny prints mostly do not, and a memo that
kept every distinct value would grow for as long as the agent runs.

Policy. New values go into the *recent* generation; when it holds half the
limit it becomes the *older* one (the previous older is dropped) and a new
recent one starts. A value found in the older generation moves back into
the recent one, so the values in use survive every turn and only those
unused for a whole generation are forgotten. At most ``limit`` entries are
held. Clearing a full memo (the previous policy) dropped the hot values too,
so it needed a bound far above the working set to keep its hit rate; with
two generations a bound of a few times the working set does (measured on the
bench's tapes, issue 14: README "Memory over time").

Hot path. ``recent`` is one dict for the memo's whole life (a turn copies it
into ``older`` and clears it), so a caller binds ``memo.recent.get`` once and
a hit costs one C call; only a miss calls into this class.

Thread safety: the writer's prepare thread and a backfill's may share a memo.
Every step is a single dict operation under the GIL; a race between two
threads can at worst forget a value or hold one entry more, never return a
wrong one (a key's value never changes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Memo"]

K = TypeVar("K")
V = TypeVar("V")


class Memo(Generic[K, V]):
    """At most ``limit`` (>= 2) key -> value pairs, the recently used ones.

    Values must not be None (None means "not held"). Callers look up
    ``recent`` first; on a miss, :meth:`recall_or_make` (or :meth:`recall`
    the older generation, else compute the value and :meth:`remember` it).
    """

    __slots__ = ("_half", "older", "recent")

    def __init__(self, limit: int) -> None:
        if limit < 2:
            raise ValueError(f"a memo holds at least 2 entries, got limit {limit}")
        self._half = limit // 2
        self.recent: dict[K, V] = {}
        self.older: dict[K, V] = {}

    @property
    def limit(self) -> int:
        return 2 * self._half

    def __len__(self) -> int:
        return len(self.recent) + len(self.older)

    def recall(self, key: K) -> V | None:
        """The older generation's value of ``key`` (moved into the recent one), or None."""
        value = self.older.pop(key, None)
        if value is not None:
            self.remember(key, value)
        return value

    def recall_or_make(self, key: K, make: Callable[[K], V]) -> V:
        """After a miss in ``recent``: the older generation's value, else ``make(key)``
        (remembered). An exception from ``make`` propagates; nothing is remembered."""
        value = self.recall(key)
        if value is None:
            value = make(key)
            self.remember(key, value)
        return value

    def remember(self, key: K, value: V) -> None:
        """Hold ``key -> value`` in the recent generation, turning generations when it is full."""
        recent = self.recent
        if len(recent) >= self._half:
            self.older = recent.copy()
            recent.clear()
        recent[key] = value

    def clear(self) -> None:
        self.recent.clear()
        self.older = {}
