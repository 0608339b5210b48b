"""Recently seen natural keys per stream: the in-memory dedup of channels whose
sequence numbers do not identify a record (Polygon ``q``, wire-formats.md 2.7).

A record is dropped as a duplicate only when a record with the same natural
key was handed to the writer by this process (stored or in flight). The
window is a fast path, not the judge: a repeat older than the window goes to
the database, whose natural key refuses it (the writer's slow path keeps the
rest of the batch). So a small window costs throughput, never correctness.

Shape, for the hot path: keys are grouped by event time, ``ts_ns -> ident``
(or a tuple of idents when several records share a time), in two
generations. A record newer than every record seen cannot be a repeat, so
the normalizer only inserts it (one dict store of an int key, inline); the
lookup runs only for records at or before the newest time
(:meth:`RecentKeys.seen_or_add`). When the newer generation holds half the
window, it becomes the older one and the older is dropped: nothing is copied.

Memory bound. All windows share :class:`KeyBudget`: each stream keeps at
most ``clamp(TOTAL_KEYS // streams, MIN_KEYS, MAX_KEYS)`` keys (as of its
last rotation), i.e. 4,096 per stream up to 64 streams, then fewer, never
under 16. In total at most ``max(TOTAL_KEYS, MIN_KEYS x streams)`` keys:
262,144 keys, about 40 MB at ~150 bytes per key, up to 16,384 streams. The
normalizer checks for a full generation once per batch (not per record), so
a window may hold one batch's records more than that until the batch ends.
"""

from __future__ import annotations

from typing import Final

__all__ = ["KeyBudget", "RecentKeys"]

TOTAL_KEYS: Final = 1 << 18
MAX_KEYS: Final = 4096
MIN_KEYS: Final = 16

Ident = str | int | None
_MISSING: Final = object()


class KeyBudget:
    """The key bound shared by every window of one normalizer."""

    def __init__(
        self, total: int = TOTAL_KEYS, most: int = MAX_KEYS, least: int = MIN_KEYS
    ) -> None:
        self._total, self._most, self._least = total, most, least
        self.windows = 0
        self.per_window = most

    def join(self) -> int:
        """One more window: returns the (now smaller) per-window capacity."""
        self.windows += 1
        self.per_window = max(self._least, min(self._most, self._total // self.windows))
        return self.per_window


class RecentKeys:
    """The natural keys ``(ident, ts_ns)`` one stream passed on recently.

    ``recent`` is public for the normalizer's inline insert of a record newer
    than any seen: ``recent[ts_ns] = ident``, then :meth:`full` /
    :meth:`rotate`. ``extra`` counts idents beyond one per time.
    """

    __slots__ = ("_budget", "extra", "half", "older", "recent")

    def __init__(self, budget: KeyBudget) -> None:
        self._budget = budget
        self.half = max(budget.join() // 2, 1)
        self.recent: dict[int, Ident | tuple[Ident, ...]] = {}
        self.older: dict[int, Ident | tuple[Ident, ...]] = {}
        self.extra = 0

    def __len__(self) -> int:
        return len(self.recent) + len(self.older) + self.extra

    def rotate(self) -> None:
        """The newer generation becomes the older; the older is forgotten."""
        self.older, self.recent, self.extra = self.recent, {}, 0
        self.half = max(self._budget.per_window // 2, 1)

    def seen_or_add(self, ident: Ident, ts_ns: int) -> bool:
        """True if ``(ident, ts_ns)`` is in the window; else remember it and return False."""
        recent = self.recent
        known = recent.get(ts_ns, _MISSING)
        if known is not _MISSING and (known == ident or (type(known) is tuple and ident in known)):
            return True
        older = self.older.get(ts_ns, _MISSING)
        if older is not _MISSING and (older == ident or (type(older) is tuple and ident in older)):
            return True
        if known is _MISSING:
            recent[ts_ns] = ident
        else:
            held = recent[ts_ns]  # the typed value behind ``known``
            recent[ts_ns] = (*held, ident) if isinstance(held, tuple) else (held, ident)
            self.extra += 1
        if len(recent) + self.extra >= self.half:
            self.rotate()
        return False
