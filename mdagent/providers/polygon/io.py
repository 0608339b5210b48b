"""Polygon/Massive I/O: connect, authenticate, subscribe, then stream frames.

Session flow (wire-formats.md 2.2): the server greets with a ``connected``
status; we send ``auth`` and wait for ``auth_success`` (``auth_failed`` is a
configuration problem: AuthFailed, retried slowly by the stream loop); then
one ``subscribe`` message with every ``<ev>.<ticker>`` param. The handshake
reads a few small status frames, so it uses plain ``json``; data frames go
untouched to the normalizer (frames read together with a status are put back).

A reload changes the subscription live (``PolygonConnection.resubscribe``):
``subscribe`` / ``unsubscribe`` messages, each param confirmed by its
``success`` status (``subscribed to: X`` / ``unsubscribed to: X``, the mock
server's wording; wire-formats.md 2.2 marks the live wording unconfirmed, so
an unconfirmed change times out at the caller's deadline and the source
reconnects as before).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Literal

import trio

from mdagent.errors import AuthFailed, ProtocolError, StreamError
from mdagent.providers.base import Source
from mdagent.providers.polygon.sansio import (
    PolygonParser,
    auth_message,
    change_message,
    subscribe_message,
    subscription_params,
)
from mdagent.providers.wsclient import (
    WebSocketClient,
    WebSocketError,
    WebSocketStream,
    connect_websocket,
)

# Polygon frames carry many events (a `*` subscription can be large).
_MAX_MESSAGE_BYTES = 16 << 20
HANDSHAKE_TIMEOUT_S = 10.0


def _statuses(frame: str | bytes) -> list[tuple[str, str]]:
    try:
        events = json.loads(frame)
    except ValueError as exc:
        raise ProtocolError(f"handshake frame is not JSON: {frame[:200]!r}") from exc
    if not isinstance(events, list):
        raise ProtocolError(f"handshake frame is not a JSON array: {frame[:200]!r}")
    return [
        (str(e.get("status", "")), str(e.get("message", "")))
        for e in events
        if isinstance(e, dict) and e.get("ev") == "status"
    ]


async def _expect_status(ws: WebSocketClient, wanted: str) -> None:
    while True:
        frames = await ws.receive_batch()
        for i, frame in enumerate(frames):
            for status, message in _statuses(frame):
                if status == "auth_failed":
                    raise AuthFailed(f"auth_failed: {message}")
                if status in ("auth_timeout", "max_connections", "error"):
                    raise StreamError(f"{status}: {message}")
                if status == wanted:
                    ws.unread(frames[i + 1 :])
                    return


_Verb = Literal["subscribe", "unsubscribe"]
_CONFIRMATION = {"subscribe": "subscribed to: ", "unsubscribe": "unsubscribed to: "}


class PolygonConnection(WebSocketStream):
    """One authenticated connection; its subscription can change live (``resubscribe``)."""

    def __init__(self, ws: WebSocketClient, params: Sequence[str]) -> None:
        super().__init__(ws)
        self._ws_client = ws
        self.params = set(params)
        # Params of a change in flight -> the confirmation text awaited for it.
        self._awaited: dict[str, str] = {}
        self._refused: str | None = None
        self._confirmed = trio.Event()
        # One change of the subscription at a time: a reload's change and the
        # silent-stream rule's renew may run at once; they share the awaited
        # confirmations and the refusal (an error status names no param), and
        # a renew's unsubscribe+subscribe must not straddle a reload's removal.
        self._changing = trio.Lock()

    async def receive_batch(self) -> list[str | bytes]:
        """Data frames as the base class; statuses are also read while a change is in flight.

        Frames are never taken out: one frame may mix statuses and events
        (wire-formats.md 2.2), and the parser logs the statuses.
        """
        batch = await super().receive_batch()
        if self._awaited:
            for frame in batch:
                if ("status" in frame) if isinstance(frame, str) else (b"status" in frame):
                    self._take_statuses(frame)
        return batch

    def _take_statuses(self, frame: str | bytes) -> None:
        try:
            statuses = _statuses(frame)
        except ProtocolError:
            return  # not ours: the parser dead-letters it
        for status, message in statuses:
            if status == "error":
                self._refused = message
            elif status == "success":
                for param, confirmation in list(self._awaited.items()):
                    if message == confirmation + param:
                        del self._awaited[param]
        self._confirmed.set()
        self._confirmed = trio.Event()

    async def resubscribe(self, old: Source, new: Source) -> bool:
        """Subscribe the added ``<ev>.<ticker>`` params, then unsubscribe the removed ones.

        Each param is confirmed by its status before the next message. Raises
        StreamError on an ``error`` status or a lost connection. The reader
        task must be running (it reads the statuses).
        """
        wanted = subscription_params(new.channels, new.symbols)
        async with self._changing:
            added = [p for p in wanted if p not in self.params]
            removed = sorted(self.params - set(wanted))
            if added:
                await self._change("subscribe", added)
            if removed:
                await self._change("unsubscribe", removed)
        return True

    async def renew(self, streams: Sequence[tuple[str, str]]) -> bool:
        """Unsubscribe, then subscribe again, ``(ticker, ev)`` streams the venue stopped sending."""
        async with self._changing:
            params = sorted({f"{channel}.{symbol}" for symbol, channel in streams} & self.params)
            if not params:
                return False
            await self._change("unsubscribe", params)
            await self._change("subscribe", params)
        return True

    async def _change(self, verb: _Verb, params: list[str]) -> None:
        self._refused = None
        self._awaited.update((p, _CONFIRMATION[verb]) for p in params)
        try:
            await self._ws_client.send_text(change_message(verb, params))
        except (WebSocketError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise StreamError(f"{verb} not sent: {exc}") from exc
        try:
            while any(p in self._awaited for p in params):
                if self._refused is not None:
                    raise StreamError(f"{verb} {params[:3]} refused: {self._refused}")
                await self._confirmed.wait()
        finally:
            for p in params:
                self._awaited.pop(p, None)
        if verb == "subscribe":
            self.params.update(params)
        else:
            self.params.difference_update(params)


class PolygonAdapter:
    """The stream half of Polygon/Massive (see providers/base.py StreamHalf)."""

    def new_parser(self, source: Source) -> PolygonParser:
        return PolygonParser()

    def subscribe_messages(self, source: Source) -> list[str]:
        return [subscribe_message(source.channels, source.symbols)]

    def connection_urls(self, source: Source) -> list[str]:
        """The source's connection plan: one connection; the subscription is a message."""
        return [source.effective_ws_url()]

    @asynccontextmanager
    async def connect(self, source: Source) -> AsyncIterator[PolygonConnection]:
        url = source.effective_ws_url()
        api_key = source.api_key()
        if not api_key:
            raise AuthFailed(f"environment variable {source.api_key_env} is not set")
        ws: WebSocketClient | None = None
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                ws = await connect_websocket(
                    url, max_message_bytes=_MAX_MESSAGE_BYTES, ca_file=source.ca_file
                )
                await _expect_status(ws, "connected")
                await ws.send_text(auth_message(api_key))
                await _expect_status(ws, "auth_success")
                for message in self.subscribe_messages(source):
                    await ws.send_text(message)
        except BaseException as exc:
            if ws is not None:
                await ws.aclose()
            if isinstance(exc, trio.TooSlowError):
                raise StreamError(f"handshake with {url} timed out") from exc
            if isinstance(exc, WebSocketError | OSError | trio.BrokenResourceError):
                raise StreamError(f"connection to {url} failed: {exc}") from exc
            raise
        try:
            # The server closes the socket itself after max_connections; the
            # status event is still parsed and logged by the normalizer.
            yield PolygonConnection(ws, subscription_params(source.channels, source.symbols))
        finally:
            await ws.aclose()
