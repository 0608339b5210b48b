"""Binance I/O: combined-stream WebSockets, one per group of the source's connection plan.

The subscription is in the URL (``/stream?streams=...``), so a reconnect never
needs control messages that count against the 5 messages/s limit. A source
whose streams exceed one connection's limits (``plan.py``) gets several,
read as one (``providers/merged.py``).
The client (providers/wsclient.py) answers the server's pings (every 20 s)
as it reads; a stream that stops reading for a minute (backpressure) is
disconnected by Binance, which the reconnect logic expects.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from mdagent.errors import StreamError
from mdagent.providers.base import Source, StreamConnection
from mdagent.providers.binance.plan import connection_urls
from mdagent.providers.binance.sansio import BinanceParser, stream_name
from mdagent.providers.merged import open_merged
from mdagent.providers.wsclient import WebSocketError, WebSocketStream, connect_websocket

_MAX_MESSAGE_BYTES = 1 << 20
CONNECT_TIMEOUT_S = 10.0


class BinanceConnection(WebSocketStream):
    def reconnect_reason(self, frame: str | bytes) -> str | None:
        # A cheap substring test per frame; the parser records the event itself.
        found = "serverShutdown" in frame if isinstance(frame, str) else b"serverShutdown" in frame
        return "serverShutdown" if found else None


class BinanceAdapter:
    """The stream half of Binance (see providers/base.py StreamHalf)."""

    def new_parser(self, source: Source) -> BinanceParser:
        return BinanceParser(symbols=source.symbols)

    def subscribe_messages(self, source: Source) -> list[str]:
        # The streams are in the combined-stream URLs (connection_urls).
        return []

    def connection_urls(self, source: Source) -> list[str]:
        """The source's connection plan: one combined-stream URL per connection."""
        streams = [stream_name(s, c) for s in source.symbols for c in source.channels]
        return connection_urls(source.effective_ws_url(), streams)

    @asynccontextmanager
    async def connect(self, source: Source) -> AsyncIterator[StreamConnection]:
        urls = self.connection_urls(source)
        if len(urls) == 1:
            async with self._connect_one(source, urls[0]) as conn:
                yield conn
            return
        openers = [functools.partial(self._connect_one, source, url) for url in urls]
        async with open_merged(openers) as merged:
            yield merged

    @asynccontextmanager
    async def _connect_one(self, source: Source, url: str) -> AsyncIterator[BinanceConnection]:
        base = source.effective_ws_url()
        try:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                ws = await connect_websocket(
                    url, max_message_bytes=_MAX_MESSAGE_BYTES, ca_file=source.ca_file
                )
        except trio.TooSlowError as exc:
            raise StreamError(f"connecting to {base} timed out") from exc
        except (WebSocketError, OSError, trio.BrokenResourceError) as exc:
            raise StreamError(f"connecting to {base} failed: {exc}") from exc
        try:
            yield BinanceConnection(ws)
        finally:
            await ws.aclose()
