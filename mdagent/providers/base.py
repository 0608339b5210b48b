"""What the generic pipeline needs from a provider, and nothing more.

A provider has a sans-IO part (a parser: frame -> records) and an I/O part
(open a connection: connect, authenticate, subscribe). The stream loop, the
normalizer and the writer never look at provider names; they ask the adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    """How far a channel's ``seq`` can be trusted, which decides dedup and gap detection.

    identifies: a record's seq is unique and increasing (Binance trade ``t``,
        aggTrade ``a``, bookTicker ``u``): a seq at or below the last one seen
        or committed is a duplicate. When False (Polygon ``q``: shared by two
        trades, seen going backwards, reset per New York session; wire-formats
        2.7), duplicates are found by natural key (``pipeline/dedup.py``) and
        the seq is stored as a hint only.
    contiguous: every next seq is previous + 1 (gaps are exact id ranges).
    candle_interval_ns: bars exist for every interval (Binance klines), so a
        missing open time is a gap.
    session_bounds_ns: for a seq that restarts per trading session, the
        [start, end) in Unix ns of the session holding a time (Polygon: the
        New York date). The normalizer uses it only to know when the seq may
        have restarted, never to decide that a record is a repeat.
    """

    identifies: bool = False
    contiguous: bool = False
    candle_interval_ns: int | None = None
    session_bounds_ns: Callable[[int], tuple[int, int]] | None = None


class ProviderAdapter(Protocol):
    name: str

    def new_parser(self, source: SourceConfig) -> Parser: ...

    def connect(self, source: SourceConfig) -> AbstractAsyncContextManager[StreamConnection]:
        """Open, authenticate and subscribe; the context closes the connection."""
        ...

    def sequence_rule(self, channel: str) -> SequenceRule: ...

    def connection_urls(self, source: SourceConfig) -> list[str]:
        """The URL of each connection ``connect`` opens for ``source`` (its connection plan)."""
        ...
