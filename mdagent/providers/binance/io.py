"""Binance I/O: one combined-stream WebSocket per source.

The subscription is in the URL (``/stream?streams=...``), so a reconnect never
needs control messages that count against the 5 messages/s limit.
trio-websocket answers the server's pings (every 20 s) from its reader task.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio_websocket

from mdagent.config import SourceConfig
from mdagent.errors import StreamError
from mdagent.providers.base import SequenceRule
from mdagent.providers.binance.sansio import BinanceParser, combined_stream_url, stream_name

_INTERVAL_NS = {
    "1s": 1,
    "1m": 60,
    "3m": 180,
    "5m": 300,
    "15m": 900,
    "30m": 1800,
    "1h": 3600,
    "2h": 7200,
    "4h": 14400,
    "6h": 21600,
    "8h": 28800,
    "12h": 43200,
    "1d": 86400,
    "3d": 259200,
    "1w": 604800,
}

# Bounds the frames trio-websocket buffers between its reader and us: with
# Binance's frames (< 1 KiB) this is < 1 MiB per connection.
_MESSAGE_QUEUE = 1024
_MAX_MESSAGE_BYTES = 1 << 20


class BinanceConnection:
    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws

    async def receive(self) -> str | bytes:
        try:
            return await self._ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise StreamError(f"connection closed: {exc.reason}") from exc

    def reconnect_reason(self, frame: str | bytes) -> str | None:
        # A cheap substring test per frame; the parser records the event itself.
        found = "serverShutdown" in frame if isinstance(frame, str) else b"serverShutdown" in frame
        return "serverShutdown" if found else None


class BinanceAdapter:
    name = "binance"

    def new_parser(self, source: SourceConfig) -> BinanceParser:
        return BinanceParser()

    def sequence_rule(self, channel: str) -> SequenceRule:
        if channel in ("trade", "aggTrade"):
            return SequenceRule(contiguous=True)
        if channel.startswith("kline_"):
            seconds = _INTERVAL_NS.get(channel[6:])
            return SequenceRule(candle_interval_ns=seconds * 1_000_000_000 if seconds else None)
        return SequenceRule()

    def stream_url(self, source: SourceConfig) -> str:
        streams = [stream_name(s, c) for s in source.symbols for c in source.channels]
        return combined_stream_url(source.effective_ws_url(), streams)

    @asynccontextmanager
    async def connect(self, source: SourceConfig) -> AsyncIterator[BinanceConnection]:
        url = self.stream_url(source)
        try:
            async with trio_websocket.open_websocket_url(
                url,
                message_queue_size=_MESSAGE_QUEUE,
                max_message_size=_MAX_MESSAGE_BYTES,
                connect_timeout=10,
                disconnect_timeout=2,
            ) as ws:
                yield BinanceConnection(ws)
        except trio_websocket.HandshakeError as exc:
            raise StreamError(
                f"handshake with {source.effective_ws_url()} failed: {exc.__cause__ or exc!r}"
            ) from exc
        except (OSError, trio.BrokenResourceError) as exc:
            raise StreamError(f"connection to {source.effective_ws_url()} failed: {exc}") from exc
