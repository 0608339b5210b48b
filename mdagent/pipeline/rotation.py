"""Make-before-break rotation: when the replacement connection may take over (sans-IO).

A connection is replaced before the venue ends it (``max_connection_age_s``;
Binance ends connections at 24 h) or when it announces ``serverShutdown``
(wire-formats.md 1.1). The replacement is opened and subscribed while the old
one is still read; its frames are held, not handed on. The old connection is
closed only once, on every stream the replacement delivered, the old one has
reached the replacement's first sequence number, and every stream the old one
delivered meanwhile has also arrived on the replacement. Then the held frames
follow the old ones to the normalizer, whose per-stream dedup (a seq at or
below the last one seen is a repeat) drops the overlap: no hole, no repeat.

Streams without a seq (candles: upserts by open time) count as covered once
both connections delivered them. A quiet stream may never show up on either
side: ``OVERLAP_MAX_S`` bounds the wait, and ``HELD_FRAMES_MAX`` bounds the
memory of the held frames (about 1 KiB each: 100k frames ~ 100 MB worst case
at the largest Binance frame sizes, ~30 MB for typical ones).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

import trio

from mdagent.config import SourceConfig
from mdagent.errors import StreamError
from mdagent.providers.base import Parser, StreamConnection
from mdagent.records import Candle, Quote, Record, Trade

__all__ = ["HELD_FRAMES_MAX", "OVERLAP_MAX_S", "Overlap", "Replacement"]

OVERLAP_MAX_S: Final = 10.0
HELD_FRAMES_MAX: Final = 100_000

_Stream = tuple[str, str]  # (symbol, channel)


class Overlap:
    """What the old and the replacement connection delivered since the replacement opened.

    Feed it the records parsed from each side's frames; ``covered()`` says when
    the old connection may close without a hole on any stream.
    """

    def __init__(self, missing_on_old: Iterable[_Stream] = ()) -> None:
        self._old_last: dict[_Stream, int | None] = {}
        self._new_first: dict[_Stream, int | None] = {}
        # Streams the old connection lost (a subscription the venue dropped,
        # streams.py): the replacement alone delivers them, nothing to wait for.
        self._missing_on_old = frozenset(missing_on_old)

    def old_delivered(self, records: Iterable[Record]) -> None:
        """Records of frames the old connection delivered (handed on) after the replacement opened."""
        for stream, seq in _positions(records):
            last = self._old_last.get(stream)
            if stream not in self._old_last or (seq is not None and (last is None or seq > last)):
                self._old_last[stream] = seq

    def new_delivered(self, records: Iterable[Record]) -> None:
        """Records of frames the replacement delivered (held)."""
        for stream, seq in _positions(records):
            if stream not in self._new_first:
                self._new_first[stream] = seq

    def waiting_for(self) -> list[str]:
        """The streams (``symbol:channel``) that would have a hole if the old closed now."""
        waiting = []
        for stream in self._old_last.keys() | self._new_first.keys():
            if stream not in self._old_last and stream in self._missing_on_old:
                continue
            if stream not in self._new_first or stream not in self._old_last:
                waiting.append(stream)
                continue
            first, last = self._new_first[stream], self._old_last[stream]
            if first is not None and (last is None or last < first):
                waiting.append(stream)
        return sorted(f"{symbol}:{channel}" for symbol, channel in waiting)

    def covered(self) -> bool:
        """True when every stream seen on either side is delivered seamlessly by the two."""
        return not self.waiting_for()


def _positions(records: Iterable[Record]) -> Iterable[tuple[_Stream, int | None]]:
    for record in records:
        if isinstance(record, Trade | Quote):
            yield (record.symbol, record.channel), record.seq
        elif isinstance(record, Candle):
            yield (record.symbol, record.channel), None


OpenConnection = Callable[[SourceConfig], Awaitable[tuple[StreamConnection, trio.Event]]]


class Replacement:
    """The connection opened to take over from the current one, read into a bounded hold.

    ``run`` is its task (in the stream task's nursery): open, then read
    batches into ``held`` (frames with receive times, ns) and the overlap,
    until ``take_over`` (the switch) or ``abandon``. It never hands frames on:
    the stream task does, after the old connection's last ones.
    """

    def __init__(
        self,
        source: SourceConfig,
        reason: str,
        new_parser: Parser,
        old_parser: Parser,
        missing_on_old: Iterable[tuple[str, str]] = (),
    ) -> None:
        """``missing_on_old``: (symbol, channel) streams the old connection no longer delivers."""
        self.source = source
        self.reason = reason
        self.overlap = Overlap(missing_on_old)
        self.held: list[tuple[str | bytes, int]] = []
        self.conn: StreamConnection | None = None
        self.failed: str | None = None
        self.started_at = trio.current_time()
        self._close: trio.Event | None = None
        self._new_parser = new_parser
        self._old_parser = old_parser
        self._opened = trio.Event()
        self._scope = trio.CancelScope()
        self._done = trio.Event()

    async def run(self, open_connection: OpenConnection) -> None:
        """Open the replacement and read it until told to stop; errors end up in ``failed``."""
        try:
            with self._scope:
                try:
                    self.conn, self._close = await open_connection(self.source)
                finally:
                    self._opened.set()
                while len(self.held) < HELD_FRAMES_MAX:
                    batch = await self.conn.receive_batch()
                    received_ns = time.time_ns()
                    for frame in batch:
                        self.held.append((frame, received_ns))
                        self.overlap.new_delivered(self._new_parser.parse(frame, received_ns))
        except StreamError as exc:
            self.failed = str(exc)
        finally:
            self._opened.set()
            self._done.set()

    def old_delivered(self, frames: list[tuple[str | bytes, int]]) -> None:
        """Frames the old connection delivered (and the stream task handed on) meanwhile."""
        for frame, received_ns in frames:
            self.overlap.old_delivered(self._old_parser.parse(frame, received_ns))

    def ready(self, now: float) -> bool:
        """True when the switch may happen: covered, or the overlap reached its bounds."""
        if self.conn is None or self.failed is not None:
            return False
        if len(self.held) >= HELD_FRAMES_MAX or now - self.started_at > OVERLAP_MAX_S:
            return True
        return bool(self.held) and self.overlap.covered()

    async def wait_opened(self) -> bool:
        """Wait until the replacement is open (True) or failed to open (False)."""
        await self._opened.wait()
        return self.conn is not None and self.failed is None

    async def take_over(self) -> tuple[StreamConnection, trio.Event, list[tuple[str | bytes, int]]]:
        """Stop reading here; (connection, its close event, the held frames) for the stream task."""
        self._scope.cancel()
        await self._done.wait()
        assert self.conn is not None and self._close is not None
        held, self.held = self.held, []
        return self.conn, self._close, held

    def abandon(self) -> None:
        """Stop reading and close the replacement (it failed, or the stream stops)."""
        self._scope.cancel()
        if self._close is not None:
            self._close.set()
