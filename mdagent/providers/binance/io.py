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
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio

from mdagent.errors import StreamError
from mdagent.providers.base import Source, StreamConnection
from mdagent.providers.binance.control import ControlChannel, ControlPacer, Method
from mdagent.providers.binance.plan import (
    MAX_STREAMS_PER_CONNECTION,
    connection_groups,
    connection_urls,
)
from mdagent.providers.binance.sansio import BinanceParser, combined_stream_url, stream_name
from mdagent.providers.merged import MergedConnection, open_merged
from mdagent.providers.wsclient import (
    WebSocketClient,
    WebSocketError,
    WebSocketStream,
    connect_websocket,
)

_MAX_MESSAGE_BYTES = 1 << 20
CONNECT_TIMEOUT_S = 10.0


class BinanceConnection(WebSocketStream):
    """One combined-stream connection; its subscription can change live (``resubscribe``)."""

    def __init__(self, ws: WebSocketClient, streams: list[str]) -> None:
        super().__init__(ws)
        self._ws_client = ws
        self.streams = set(streams)
        self._control = ControlChannel()
        self._pacer = ControlPacer()
        # A reload's change and the silent-stream rule's renew may run at once:
        # one change of the subscription at a time, so the pacer's wait-then-send
        # is one step per message (else all see an empty budget and go, and the
        # venue closes the connection) and a renew cannot straddle a removal.
        self._changing = trio.Lock()
        self._replied = trio.Event()

    def reconnect_reason(self, frame: str | bytes) -> str | None:
        # A cheap substring test per frame; the parser records the event itself.
        found = "serverShutdown" in frame if isinstance(frame, str) else b"serverShutdown" in frame
        return "serverShutdown" if found else None

    async def receive_batch(self) -> list[str | bytes]:
        """Data frames as the base class, minus the replies to our control requests."""
        while True:
            batch = await super().receive_batch()
            if not self._control.pending():
                return batch
            kept = [frame for frame in batch if not self._control.take_reply(frame)]
            if len(kept) < len(batch):
                self._replied.set()
                self._replied = trio.Event()
            if kept:
                return kept

    async def resubscribe(self, old: Source, new: Source) -> bool:
        """SUBSCRIBE the added streams, UNSUBSCRIBE the removed ones, each reply checked by id.

        False (reconnect instead) when the connection would carry more than
        1,024 streams (wire-formats.md 1.3). Paced to 3 control messages per
        second. Raises StreamError on an error reply or a lost connection.
        Replies are read by the connection's reader task, which must be running.
        """
        wanted = {stream_name(s, c) for s in new.symbols for c in new.channels}
        if len(wanted | self.streams) > MAX_STREAMS_PER_CONNECTION:
            return False
        await self.change(sorted(wanted - self.streams), sorted(self.streams - wanted))
        return True

    async def change(self, added: list[str], removed: list[str]) -> None:
        """SUBSCRIBE ``added``, then UNSUBSCRIBE ``removed`` stream names (see resubscribe)."""
        # Subscribe first: the connection never drops below what both configs share.
        async with self._changing:
            if added:
                await self._request("SUBSCRIBE", added)
                self.streams.update(added)
            if removed:
                await self._request("UNSUBSCRIBE", removed)
                self.streams.difference_update(removed)

    async def renew(self, streams: Sequence[tuple[str, str]]) -> bool:
        """UNSUBSCRIBE then SUBSCRIBE streams the venue stopped sending, replies checked by id.

        A SUBSCRIBE of a stream already listed may be a no-op at the venue,
        hence the UNSUBSCRIBE first. False when none of them is on this
        connection. Raises StreamError as ``resubscribe``.
        """
        async with self._changing:
            names = sorted({stream_name(s, c) for s, c in streams} & self.streams)
            if not names:
                return False
            await self._request("UNSUBSCRIBE", names)
            await self._request("SUBSCRIBE", names)
        return True

    async def _request(self, method: Method, params: list[str]) -> None:
        await trio.sleep(self._pacer.wait_s(trio.current_time()))
        req_id, text = self._control.request(method, params)
        self._pacer.sent(trio.current_time())
        try:
            await self._ws_client.send_text(text)
        except (WebSocketError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise StreamError(f"{method} not sent: {exc}") from exc
        while (reply := self._control.reply(req_id)) is None:
            await self._replied.wait()
        if reply.error:
            raise StreamError(f"{method} {params[:3]} refused: {reply.error}")


class BinanceConnections(MergedConnection):
    """A source's several combined-stream connections, whose subscriptions change live."""

    async def resubscribe(self, old: Source, new: Source) -> bool:
        """Each added stream goes to the connection carrying the fewest (at most 1,024);
        each removed one is unsubscribed where it is. False (reconnect with a new
        plan) when the connections cannot take the added streams. Each connection
        paces and checks its own control messages (BinanceConnection.change).
        """
        parts = [p for p in self.parts if isinstance(p, BinanceConnection)]
        if len(parts) != len(self.parts):
            return False
        wanted = [stream_name(s, c) for s in new.symbols for c in new.channels]
        carried = set().union(*(p.streams for p in parts))
        load = {id(p): len(p.streams) for p in parts}
        adds: dict[int, list[str]] = {id(p): [] for p in parts}
        for name in dict.fromkeys(wanted):
            if name in carried:
                continue
            part = min(parts, key=lambda p: load[id(p)])
            if load[id(part)] >= MAX_STREAMS_PER_CONNECTION:
                return False
            adds[id(part)].append(name)
            load[id(part)] += 1
        keep = set(wanted)
        for part in parts:
            await part.change(adds[id(part)], sorted(part.streams - keep))
        return True


class BinanceAdapter:
    """The stream half of Binance (see providers/base.py StreamHalf)."""

    def new_parser(self, source: Source) -> BinanceParser:
        return BinanceParser(symbols=source.symbols)

    def subscribe_messages(self, source: Source) -> list[str]:
        # The streams are in the combined-stream URLs (connection_urls); a
        # reload changes them live (BinanceConnection.resubscribe).
        return []

    def connection_urls(self, source: Source) -> list[str]:
        """The source's connection plan: one combined-stream URL per connection."""
        return connection_urls(source.effective_ws_url(), self.streams(source))

    def streams(self, source: Source) -> list[str]:
        """The source's stream names (``btcusdt@trade``), in configured order."""
        return [stream_name(s, c) for s in source.symbols for c in source.channels]

    @asynccontextmanager
    async def connect(self, source: Source) -> AsyncIterator[StreamConnection]:
        base = source.effective_ws_url()
        groups = connection_groups(base, self.streams(source))
        urls = [combined_stream_url(base, group) for group in groups]
        if len(urls) == 1:
            async with self._connect_one(source, urls[0], groups[0]) as conn:
                yield conn
            return
        openers = [
            functools.partial(self._connect_one, source, url, group)
            for url, group in zip(urls, groups, strict=True)
        ]
        async with open_merged(openers, BinanceConnections) as merged:
            yield merged

    @asynccontextmanager
    async def _connect_one(
        self, source: Source, url: str, streams: list[str]
    ) -> AsyncIterator[BinanceConnection]:
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
            yield BinanceConnection(ws, streams)
        finally:
            await ws.aclose()
