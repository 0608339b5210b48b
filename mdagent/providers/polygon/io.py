"""Polygon/Massive I/O: connect, authenticate, subscribe, then stream frames.

Session flow (wire-formats.md 2.2): the server greets with a ``connected``
status; we send ``auth`` and wait for ``auth_success`` (``auth_failed`` is a
configuration problem: AuthFailed, retried slowly by the stream loop); then
one ``subscribe`` message with every ``<ev>.<ticker>`` param. The handshake
reads a few small status frames, so it uses plain ``json``; data frames go
untouched to the normalizer (frames read together with a status are put back).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from mdagent.errors import AuthFailed, ProtocolError, StreamError
from mdagent.providers.base import Source
from mdagent.providers.polygon.sansio import PolygonParser, auth_message, subscribe_message
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
    async def connect(self, source: Source) -> AsyncIterator[WebSocketStream]:
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
            yield WebSocketStream(ws)
        finally:
            await ws.aclose()
