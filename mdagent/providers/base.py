"""What the generic pipeline needs from a provider, and nothing more.

A provider has a sans-IO part (a parser: frame -> records) and an I/O part
(open a connection: connect, authenticate, subscribe). The stream loop, the
normalizer and the writer never look at provider names; they ask the adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import attrs

from mdagent.config import SourceConfig
from mdagent.records import Record


class Parser(Protocol):
    def parse(self, frame: bytes | str, received_ns: int) -> Sequence[Record]: ...


class StreamConnection(Protocol):
    async def receive_batch(self) -> list[str | bytes]:
        """Every data frame available now (at least one), in arrival order.

        Raises StreamError (or a subclass) when the connection ends. Safe to
        cancel: nothing received is lost by a cancelled call.
        """
        ...

    def reconnect_reason(self, frame: str | bytes) -> str | None:
        """Non-None when this frame asks the client to reconnect (e.g. serverShutdown)."""
        ...


@attrs.frozen
class SequenceRule:
    """How a channel's ``seq`` behaves, which decides dedup and gap detection.

    contiguous: every next seq is previous + 1 (gaps are exact id ranges).
    resets_daily: seq restarts each day (Polygon), so compare only within a day.
    candle_interval_ns: bars exist for every interval (Binance klines), so a
        missing open time is a gap.
    """

    contiguous: bool = False
    resets_daily: bool = False
    candle_interval_ns: int | None = None


class ProviderAdapter(Protocol):
    name: str

    def new_parser(self, source: SourceConfig) -> Parser: ...

    def connect(self, source: SourceConfig) -> AbstractAsyncContextManager[StreamConnection]:
        """Open, authenticate and subscribe; the context closes the connection."""
        ...

    def sequence_rule(self, channel: str) -> SequenceRule: ...
