"""What crosses the channel from stream tasks to the normalizer."""

from __future__ import annotations

import attrs

from mdagent.config import SourceConfig
from mdagent.providers.base import Parser
from mdagent.records import DeadLetter


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
