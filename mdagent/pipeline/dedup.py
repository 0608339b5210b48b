"""Recently seen natural keys per stream: the in-memory dedup of channels whose
sequence numbers do not identify a record (Polygon ``q``, wire-formats.md 2.7).

A record is dropped as a duplicate only when a record with the same natural
key was handed to the writer by this process (stored or in flight). The
window is a fast path, not the judge: a repeat the window does not catch goes
to the database, whose natural key refuses it (the writer's slow path keeps
the rest of the batch). So a small window, or a skipped lookup, costs
throughput, never correctness.

Hot path. The window maps a record's sequence to the record's *mark*, its
natural key within that sequence: the event time (ns) for a quote, whose
sequence is its identity, and (event time, trade id) for a trade; a list of
marks when several records share a sequence. A quote's mark is the record's
own int, so storing it costs one int-keyed dict store and no allocation; a
trade's costs one small tuple. The window never holds a record, so a record
leaves memory once it is committed (holding records, ~450 bytes each, the
windows were ~40 MB of the Polygon bench's peak RSS; issue 14). The
normalizer skips the lookup, and only stores, when the record's sequence is above every sequence seen in
its trading session (``SequenceRule.session_bounds_ns``; Polygon: the New
York date): a re-send carries its original's sequence, which was seen, so it
cannot be above them. (A re-send across a session boundary can: the
database catches it.) Otherwise the marks stored under that sequence are
compared. ``q`` is thereby used only to find candidates, never to
decide that a record is a repeat. Records without a sequence are kept by
natural key in a set. When the newer generation holds half the window, or
began ``GENERATION_NS`` ago (receive time), it becomes the older one and the
older is dropped: nothing is copied.

Memory bound. All windows share :class:`KeyBudget`: each stream keeps at
most ``clamp(TOTAL_KEYS // streams, MIN_KEYS, MAX_KEYS)`` keys (as of its
last rotation), i.e. 4,096 per stream up to 8 streams, then fewer, never
under 16. In total at most ``max(TOTAL_KEYS, MIN_KEYS x streams)`` keys:
32,768 keys, up to 2,048 streams: about 4 MB of quote keys (the sequence,
the time and a dict slot, ~120 bytes) or 6 MB of trade keys (~180 bytes
with the tuple and the id). The normalizer checks for a full generation
once per batch (not per record), so a window may hold one batch's keys more
than that until the batch ends. (The bound was 131,072 keys, 16-24 MB,
which the bench's 40 windows filled only after minutes: a larger window
catches repeats from further back, which the database refuses anyway.)

Memory over time. The key bound alone lets a stream's window grow for as
long as the stream takes to deliver its share: seconds for a busy ticker,
hours or a day for an illiquid one, so the agent's memory would keep rising
long after start. Generations also turn by age: a key is kept for at least
one generation (``GENERATION_NS``, 30 s of receive time) and, while its
stream delivers, at most about two; so every window reaches its plateau
within about a minute of steady flow (README "Memory over time"). A repeat
later than that is the database's to refuse (the writer's slow path).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Final

__all__ = ["KeyBudget", "RecentKeys"]

TOTAL_KEYS: Final = 1 << 15
MAX_KEYS: Final = 4096
MIN_KEYS: Final = 16
# A generation turns at this age (ns of receive time), full or not.
GENERATION_NS: Final = 30 * 1_000_000_000


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
    """The records one stream passed on recently, by sequence, in two generations.

    ``recent`` is public for the normalizer's inline store
    (``recent[seq] = mark``) of a record that needs no lookup;
    :meth:`full` and :meth:`rotate` keep the bound.
    """

    __slots__ = (
        "_budget",
        "_since_ns",
        "half",
        "older",
        "older_unsequenced",
        "recent",
        "unsequenced",
    )

    def __init__(self, budget: KeyBudget) -> None:
        self._budget = budget
        self.half = max(budget.join() // 2, 1)
        # Receive time the recent generation began: the first check's time.
        self._since_ns: int | None = None
        self.recent: dict[int, Any] = {}
        self.older: dict[int, Any] = {}
        self.unsequenced: set[Hashable] = set()
        self.older_unsequenced: set[Hashable] = set()

    def __len__(self) -> int:
        return (
            len(self.recent) + len(self.older) + len(self.unsequenced) + len(self.older_unsequenced)
        )

    def full(self, now_ns: int) -> bool:
        """True when the recent generation holds half the window or is ``GENERATION_NS`` old.

        ``now_ns``: the receive time (ns) of the batch just normalized. A
        clock stepped back restarts the age from ``now_ns``.
        """
        if len(self.recent) + len(self.unsequenced) >= self.half:
            return True
        since = self._since_ns
        if since is None or now_ns < since:
            self._since_ns = now_ns
            return False
        return now_ns - since >= GENERATION_NS

    def rotate(self, now_ns: int) -> None:
        """The newer generation becomes the older (from ``now_ns`` on); the older is forgotten."""
        self.older, self.recent = self.recent, {}
        self.older_unsequenced, self.unsequenced = self.unsequenced, set()
        self.half = max(self._budget.per_window // 2, 1)
        self._since_ns = now_ns

    def seen_or_add(self, mark: Hashable, seq: int | None, natural: Hashable) -> bool:
        """True if a record with this natural key is in the window; else remember it.

        ``mark``: the record's natural key within ``seq`` (compared with
        ``==``); ``natural``: the whole key, used for a record without a
        sequence.
        """
        if seq is None:
            if natural in self.unsequenced or natural in self.older_unsequenced:
                return True
            self.unsequenced.add(natural)
            return False
        for generation in (self.recent, self.older):
            known = generation.get(seq)
            if known is not None:
                if type(known) is list:
                    if mark in known:
                        return True
                elif known == mark:
                    return True
        known = self.recent.get(seq)
        if known is None:
            self.recent[seq] = mark
        elif type(known) is list:
            known.append(mark)
        else:
            self.recent[seq] = [known, mark]
        return False
