"""A scripted venue: each WebSocket connection plays a prepared tape of frames.

The fake venues generate markets; this one plays exactly the frames a test
wrote, including what no real venue should send (invalid UTF-8 in a text
frame, binary frames, oversized messages, broken JSON). It speaks enough of
each provider's session to be a source's ``ws_url``:

- ``polygon``: ``connected`` status, then ``auth_success`` for the configured
  key, then (after the client's subscribe message) the tape;
- ``binance``: any ``/stream?streams=...`` request is accepted and the tape
  plays at once.

Connection *n* (from 0) plays ``tapes[n]``; after the last tape, connections
stay open and silent. A tape item is a ``str`` (sent as one text frame),
:class:`RawFrame` (bytes written as they are: build them with
:func:`text_frame` / :func:`binary_frame`), or :class:`Disconnect` (drop the
TCP connection, as a venue restart would). The venue records each request
target and the close code each client sent.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import trio

from mdagent.testing.wsserver import (
    IncomingWebSocket,
    ServerWebSocket,
    TextReceived,
    WebSocketClosed,
    encode_text_frame,
    serve_websocket,
)

__all__ = ["Disconnect", "RawFrame", "TapeVenue", "binary_frame", "text_frame"]


@attrs.frozen
class RawFrame:
    """Bytes written to the socket as they are (a whole frame, or a broken one)."""

    data: bytes


@attrs.frozen
class Disconnect:
    """Drop the connection here (no close frame)."""


TapeItem = str | RawFrame | Disconnect


def text_frame(payload: bytes) -> RawFrame:
    """A text frame whose payload is ``payload`` as given (valid UTF-8 or not)."""
    return RawFrame(encode_text_frame(payload))


def binary_frame(payload: bytes) -> RawFrame:
    """A binary frame (opcode 2), unmasked, unfragmented."""
    n = len(payload)
    if n < 126:
        header = bytes((0x82, n))
    elif n < 65536:
        header = b"\x82\x7e" + n.to_bytes(2, "big")
    else:
        header = b"\x82\x7f" + n.to_bytes(8, "big")
    return RawFrame(header + payload)


class TapeVenue:
    """Serves ``tapes`` (one per connection) in the session of ``provider``."""

    def __init__(
        self, provider: str, tapes: Sequence[Sequence[TapeItem]], *, api_key: str = "tape-key"
    ) -> None:
        if provider not in ("binance", "polygon"):
            raise ValueError(f"unknown provider {provider!r}")
        self.provider = provider
        self.tapes = [list(t) for t in tapes]
        self.api_key = api_key
        self.targets: list[str] = []
        self.client_close_codes: list[int] = []
        self.tapes_played = 0
        self.ws_url = ""

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``task_status.started`` gets the ``ws://`` URL."""
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_websocket, self._handle)
            self.ws_url = f"ws://127.0.0.1:{port}"
            task_status.started(self.ws_url)

    async def _handle(self, incoming: IncomingWebSocket) -> None:
        self.targets.append(incoming.request.target)
        ws = await incoming.accept()
        tape_index = len(self.targets) - 1
        if self.provider == "polygon" and not await self._polygon_session(ws):
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_until_closed, ws, nursery.cancel_scope)
            if tape_index < len(self.tapes):
                await self._play(ws, self.tapes[tape_index])
                self.tapes_played += 1
            await trio.sleep_forever()

    async def _play(self, ws: ServerWebSocket, tape: list[TapeItem]) -> None:
        for item in tape:
            try:
                if isinstance(item, Disconnect):
                    await ws.abort("tape disconnect")
                    return
                if isinstance(item, RawFrame):
                    await ws.send_raw_bytes(item.data)
                else:
                    await ws.send_text(item)
            except WebSocketClosed:
                return  # the client closed (e.g. 1007 / 1009): the tape ends here

    async def _polygon_session(self, ws: ServerWebSocket) -> bool:
        await ws.send_text('[{"ev":"status","status":"connected","message":"Connected"}]')
        while True:
            text = await self._next_text(ws)
            if text is None:
                return False
            if '"auth"' in text:
                ok = f'"{self.api_key}"' in text
                status = "auth_success" if ok else "auth_failed"
                await ws.send_text(f'[{{"ev":"status","status":"{status}","message":"x"}}]')
                if not ok:
                    return False
            elif '"subscribe"' in text:
                return True

    async def _next_text(self, ws: ServerWebSocket) -> str | None:
        while True:
            try:
                event = await ws.receive()
            except WebSocketClosed:
                return None
            if isinstance(event, TextReceived):
                return event.text

    async def _read_until_closed(self, ws: ServerWebSocket, scope: trio.CancelScope) -> None:
        # After the handshake this task is the only reader: it sees the
        # client's close (and its code) and ends the connection's tasks.
        try:
            while True:
                await ws.receive()
        except WebSocketClosed as closed:
            if closed.by_peer:
                self.client_close_codes.append(closed.code)
        scope.cancel()
