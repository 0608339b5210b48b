"""Polygon/Massive I/O: connect, authenticate, subscribe, then stream frames.

Session flow (wire-formats.md 2.2): the server greets with a ``connected``
status; we send ``auth`` and wait for ``auth_success`` (``auth_failed`` is a
configuration problem: AuthFailed, retried slowly by the stream loop); then
one ``subscribe`` message with every ``<ev>.<ticker>`` param. The handshake
reads a few small status frames, so it uses plain ``json``; data frames go
untouched to the normalizer.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio_websocket

from mdagent.config import SourceConfig, resolve_secret
from mdagent.errors import AuthFailed, ProtocolError, StreamError
from mdagent.providers.base import SequenceRule
from mdagent.providers.polygon.sansio import PolygonParser, auth_message, subscribe_message

_MESSAGE_QUEUE = 256
# Polygon frames carry many events (a `*` subscription can be large).
_MAX_MESSAGE_BYTES = 16 << 20
HANDSHAKE_TIMEOUT_S = 10.0


class PolygonConnection:
    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws

    async def receive(self) -> str | bytes:
        try:
            return await self._ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise StreamError(f"connection closed: {exc.reason}") from exc

    def reconnect_reason(self, frame: str | bytes) -> str | None:
        # The server closes the socket itself after max_connections; the
        # status event is still parsed and logged by the normalizer.
        return None


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


async def _expect_status(ws: trio_websocket.WebSocketConnection, wanted: str) -> None:
    while True:
        try:
            frame = await ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise StreamError(
                f"closed during handshake (waiting for {wanted}): {exc.reason}"
            ) from exc
        for status, message in _statuses(frame):
            if status == wanted:
                return
            if status == "auth_failed":
                raise AuthFailed(f"auth_failed: {message}")
            if status in ("auth_timeout", "max_connections", "error"):
                raise StreamError(f"{status}: {message}")


class PolygonAdapter:
    name = "polygon"

    def new_parser(self, source: SourceConfig) -> PolygonParser:
        return PolygonParser()

    def sequence_rule(self, channel: str) -> SequenceRule:
        if channel in ("T", "Q"):
            # Sequence numbers increase per ticker but have gaps and restart
            # every day: good for dedup within a day, not for counting misses.
            return SequenceRule(resets_daily=True)
        # No bar is emitted for an interval without trades: missing bars are normal.
        return SequenceRule()

    @asynccontextmanager
    async def connect(self, source: SourceConfig) -> AsyncIterator[PolygonConnection]:
        url = source.effective_ws_url()
        api_key = resolve_secret(source.api_key_env)
        if not api_key:
            raise AuthFailed(f"environment variable {source.api_key_env} is not set")
        try:
            async with trio_websocket.open_websocket_url(
                url,
                message_queue_size=_MESSAGE_QUEUE,
                max_message_size=_MAX_MESSAGE_BYTES,
                connect_timeout=10,
                disconnect_timeout=2,
            ) as ws:
                with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                    await _expect_status(ws, "connected")
                    await ws.send_message(auth_message(api_key))
                    await _expect_status(ws, "auth_success")
                    await ws.send_message(subscribe_message(source.channels, source.symbols))
                yield PolygonConnection(ws)
        except trio.TooSlowError as exc:
            raise StreamError(f"handshake with {url} timed out") from exc
        except trio_websocket.HandshakeError as exc:
            raise StreamError(f"handshake with {url} failed: {exc.__cause__ or exc!r}") from exc
        except trio_websocket.ConnectionClosed as exc:
            raise StreamError(f"connection to {url} closed: {exc.reason}") from exc
        except (OSError, trio.BrokenResourceError) as exc:
            raise StreamError(f"connection to {url} failed: {exc}") from exc
