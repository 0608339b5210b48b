"""Recently seen natural keys per stream: the in-memory dedup of channels whose
sequence numbers do not identify a record (Polygon ``q``, wire-formats.md 2.7).

A record is dropped as a duplicate only when a record with the same natural
key was handed to the writer by this process (stored or in flight). The
window is a fast path, not the judge: a repeat older than the window goes to
the database, whose natural key refuses it (the writer's slow path keeps the
rest of the batch). So a small window costs throughput, never correctness.

Memory bound. All windows share :class:`KeyBudget`: each stream keeps its
last ``clamp(TOTAL_KEYS // streams, MIN_KEYS, MAX_KEYS)`` keys, i.e. 4,096 per
stream up to 64 streams, then fewer, never under 16. In total at most
``max(TOTAL_KEYS, MIN_KEYS x streams)`` keys: 262,144 keys (about 50 MB at
~190 bytes per trade key) up to 16,384 streams.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Final

__all__ = ["KeyBudget", "RecentKeys"]

TOTAL_KEYS: Final = 1 << 18
MAX_KEYS: Final = 4096
MIN_KEYS: Final = 16


class KeyBudget:
    """The key bound shared by every window of one normalizer."""

    def __init__(
        self, total: int = TOTAL_KEYS, most: int = MAX_KEYS, least: int = MIN_KEYS
    ) -> None:
        self._total, self._most, self._least = total, most, least
        self.windows = 0
        self.per_window = most

    def join(self) -> None:
        """One more window: the per-window capacity shrinks (windows trim lazily)."""
        self.windows += 1
        self.per_window = max(self._least, min(self._most, self._total // self.windows))


class RecentKeys:
    """The last N natural keys of one stream, N from the shared :class:`KeyBudget`."""

    __slots__ = ("_budget", "_keys", "_order")

    def __init__(self, budget: KeyBudget) -> None:
        budget.join()
        self._budget = budget
        self._keys: set[Hashable] = set()
        self._order: deque[Hashable] = deque()

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._keys

    def add(self, key: Hashable) -> None:
        """Remember ``key`` (not already present); forget the oldest beyond the capacity."""
        self._keys.add(key)
        order = self._order
        order.append(key)
        limit = self._budget.per_window
        if len(order) > limit:
            # Trim a quarter at a time: the eviction loop runs rarely.
            keys, popleft = self._keys, order.popleft
            for _ in range(len(order) - limit + limit // 4):
                keys.discard(popleft())
