"""The connection plan of a Binance source: its streams spread over combined-stream URLs.

Two limits decide it (wire-formats.md 1.3, 1.9): at most 1,024 streams per
connection, and WebSocket URIs over about 8,000 characters were reported
refused. Streams are packed in configured order into as few URLs as keep
both: 256 symbols x 4 channels, 17,199 characters in one URL, become three.
Subscribing by message instead would spend the 5 messages/s budget on every
reconnect; separate URLs need none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from mdagent.providers.binance.sansio import TimeUnit, combined_stream_url
from mdagent.symbols import url_path_part

__all__ = ["MAX_STREAMS_PER_CONNECTION", "MAX_URL_CHARS", "connection_groups", "connection_urls"]

MAX_STREAMS_PER_CONNECTION: Final = 1024
MAX_URL_CHARS: Final = 8000


def connection_urls(
    ws_url: str,
    streams: Sequence[str],
    *,
    time_unit: TimeUnit = "ms",
    max_streams: int = MAX_STREAMS_PER_CONNECTION,
    max_chars: int = MAX_URL_CHARS,
) -> list[str]:
    """Combined-stream URLs covering ``streams`` once each, in order, each within both limits.

    Raises ValueError for no streams, or for a stream whose URL alone exceeds
    ``max_chars`` (a symbol of 40 characters encodes to at most 360).
    """
    groups = connection_groups(
        ws_url, streams, time_unit=time_unit, max_streams=max_streams, max_chars=max_chars
    )
    return [combined_stream_url(ws_url, group, time_unit=time_unit) for group in groups]


def connection_groups(
    ws_url: str,
    streams: Sequence[str],
    *,
    time_unit: TimeUnit = "ms",
    max_streams: int = MAX_STREAMS_PER_CONNECTION,
    max_chars: int = MAX_URL_CHARS,
) -> list[list[str]]:
    """The streams of each connection of :func:`connection_urls` (same arguments, same errors)."""
    if not streams:
        raise ValueError("connection_urls: at least one stream is required")
    # Length of a URL = base (with a 1-character stream) - 1 + each encoded
    # stream + the "/" between two: counted, not rebuilt per stream.
    base = len(combined_stream_url(ws_url, ["x"], time_unit=time_unit)) - 1
    groups: list[list[str]] = [[]]
    length = base
    for stream in streams:
        size = len(url_path_part(stream))
        if base + size > max_chars:
            raise ValueError(f"stream {stream!r} alone makes a URL over {max_chars} characters")
        group = groups[-1]
        extra = size + (1 if group else 0)
        if group and (len(group) >= max_streams or length + extra > max_chars):
            groups.append([stream])
            length = base + size
        else:
            group.append(stream)
            length += extra
    return groups
