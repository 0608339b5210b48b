"""The batches that cross the pipeline's two bounded channels.

``FrameBatch``: stream tasks -> normalizer (raw frames, receive times).
``WriteBatch``: normalizer -> writer (canonical records, gaps, dead letters
and the offsets they advance). Both move as batches, never single events:
a Trio memory channel moves ~100k items/s one by one (DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from mdagent.config import SourceConfig
from mdagent.db import offsets as offsets_sql
from mdagent.db.jobs import JobProgress
from mdagent.db.offsets import Offset, OffsetKey
from mdagent.providers.base import Parser
from mdagent.records import Candle, DeadLetter, Gap, Quote, RawFrame, Record, Trade


@attrs.frozen
class FrameBatch:
    """Raw frames of one source with their receive times (ns), in arrival order.

    ``resumed_after_ns`` is set on the first batch after a reconnect: the
    receive time of the last frame before the break. The normalizer turns the
    silence in between into gaps for channels that have no contiguous ids.
    ``refused`` holds the dead letters of frames the WebSocket layer refused
    (close 1007 / 1009) after these frames.
    """

    source: SourceConfig
    parser: Parser
    frames: list[tuple[str | bytes, int]]
    resumed_after_ns: int | None = None
    refused: tuple[DeadLetter, ...] = ()


@attrs.define
class WriteBatch:
    """What the async writer accumulates between two writes."""

    trades: list[Trade] = attrs.Factory(list)
    quotes: list[Quote] = attrs.Factory(list)
    candles: list[Candle] = attrs.Factory(list)
    raw: list[RawFrame] = attrs.Factory(list)
    dead: list[DeadLetter] = attrs.Factory(list)
    gaps: list[Gap] = attrs.Factory(list)
    # (provider, symbol, channel) -> (last_seq, last_ts_ns) once this batch is stored.
    offsets: dict[OffsetKey, Offset] = attrs.Factory(dict)
    # Backfill checkpoints committed with these rows (db/jobs.py); a lost
    # lease rolls the whole batch back (LeaseLost).
    jobs: list[JobProgress] = attrs.Factory(list)

    def add(self, records: Iterable[Record]) -> None:
        """Sort records by kind; market records also advance the batch's offsets."""
        offsets = self.offsets
        advance = offsets_sql.advance
        for r in records:
            if type(r) is Trade:
                self.trades.append(r)
                advance(offsets, (r.provider, r.symbol, r.channel), r.seq, r.ts_ns)
            elif type(r) is Quote:
                self.quotes.append(r)
                advance(offsets, (r.provider, r.symbol, r.channel), r.seq, r.ts_ns)
            elif type(r) is Candle:
                self.candles.append(r)
                # Only a final bar counts as received: the open bar will be
                # re-sent and must not be dropped as "already stored".
                if r.final:
                    advance(offsets, (r.provider, r.symbol, r.channel), None, r.open_ts_ns)
            elif type(r) is RawFrame:
                self.raw.append(r)
            elif type(r) is DeadLetter:
                self.dead.append(r)
            elif type(r) is Gap:
                self.gaps.append(r)
            # StreamControl is about the connection, not data: nothing to store.

    def merge(self, other: WriteBatch) -> None:
        """Append ``other`` (a later batch of the same pipeline) to this one."""
        self.trades.extend(other.trades)
        self.quotes.extend(other.quotes)
        self.candles.extend(other.candles)
        self.raw.extend(other.raw)
        self.dead.extend(other.dead)
        self.gaps.extend(other.gaps)
        self.jobs.extend(other.jobs)
        for key, (seq, ts_ns) in other.offsets.items():
            offsets_sql.advance(self.offsets, key, seq, ts_ns)

    def __len__(self) -> int:
        return (
            len(self.trades)
            + len(self.quotes)
            + len(self.candles)
            + len(self.raw)
            + len(self.dead)
            + len(self.gaps)
        )
