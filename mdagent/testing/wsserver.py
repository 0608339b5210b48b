"""A minimal WebSocket server on trio + wsproto, for the fake venues.

Why not trio-websocket's server: the fakes must see *every* client frame
(Binance counts pings and pongs against its 5 messages/s limit), must send
many frames per ``send_all`` to outrun a client, and must be able to misbehave
(drop TCP without a close frame, stop answering). A thin layer over wsproto
gives that control in a few hundred lines.

Shape (one task tree per connection, owned by :func:`serve_websocket`):

- the handler gets an :class:`IncomingWebSocket`, inspects ``request`` and
  either :meth:`~IncomingWebSocket.accept`\\ s (getting a
  :class:`ServerWebSocket`) or :meth:`~IncomingWebSocket.reject`\\ s it;
- one task calls :meth:`ServerWebSocket.receive`; any number of tasks may send
  (a FIFO lock serialises writes, so frames never interleave on the wire);
- when the handler returns, the connection is closed (TCP aborted if the
  handler did not close it).

Pings from the peer are answered automatically *and* reported, so a caller
can count them. Compression is never negotiated, so frames go out as encoded.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import partial
from urllib.parse import parse_qsl, urlsplit

import attrs
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

__all__ = [
    "BytesReceived",
    "IncomingWebSocket",
    "PingReceived",
    "PongReceived",
    "ServerWebSocket",
    "TextReceived",
    "WebSocketClosed",
    "WebSocketHandler",
    "WebSocketRequest",
    "WsEvent",
    "encode_text_frame",
    "serve_websocket",
]

_RECEIVE_CHUNK = 64 * 1024
# A close handshake must not hang on a peer that stopped reading: after this
# long the TCP connection is dropped without the close frame.
_CLOSE_SEND_TIMEOUT_S = 1.0


@attrs.frozen
class WebSocketRequest:
    """The opening handshake as the handler sees it. Header names are lower-case."""

    target: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]


@attrs.frozen
class TextReceived:
    text: str


@attrs.frozen
class BytesReceived:
    data: bytes


@attrs.frozen
class PingReceived:
    """The peer pinged; the pong has already been sent."""

    payload: bytes


@attrs.frozen
class PongReceived:
    payload: bytes


WsEvent = TextReceived | BytesReceived | PingReceived | PongReceived


class WebSocketClosed(Exception):
    """The connection is closed (by either side) or was lost."""

    def __init__(self, code: int, reason: str, *, by_peer: bool) -> None:
        super().__init__(f"websocket closed ({code} {reason!r}, by {'peer' if by_peer else 'us'})")
        self.code = code
        self.reason = reason
        self.by_peer = by_peer


@attrs.frozen
class WebSocketStatistics:
    frames_sent: int
    bytes_sent: int
    messages_received: int


class ServerWebSocket:
    """An accepted connection. One task receives; any task may send."""

    def __init__(
        self,
        stream: trio.SocketStream,
        ws: WSConnection,
        request: WebSocketRequest,
        *,
        max_message_bytes: int,
    ) -> None:
        self.request = request
        self._stream = stream
        self._ws = ws
        self._max_message_bytes = max_message_bytes
        self._send_lock = trio.StrictFIFOLock()
        self._pending: deque[WsEvent] = deque()
        self._fragments: list[str | bytes | bytearray] = []
        self._fragment_bytes = 0
        self._closed: WebSocketClosed | None = None
        self._frames_sent = 0
        self._bytes_sent = 0
        self._messages_received = 0

    @property
    def closed(self) -> WebSocketClosed | None:
        """Why the connection closed, or ``None`` while it is open."""
        return self._closed

    def statistics(self) -> WebSocketStatistics:
        return WebSocketStatistics(self._frames_sent, self._bytes_sent, self._messages_received)

    # -- receiving ---------------------------------------------------------------------------

    async def receive(self) -> WsEvent:
        """The next message, ping or pong from the peer.

        Raises :class:`WebSocketClosed` once the connection is closed and every
        event received before the close has been returned.
        """
        while True:
            if self._pending:
                return self._pending.popleft()
            if self._closed is not None:
                raise self._closed
            try:
                data = await self._stream.receive_some(_RECEIVE_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self._lost("connection lost")
                continue
            if not data:
                await self._lost("EOF without a close frame")
                continue
            self._ws.receive_data(data)
            for event in list(self._ws.events()):
                await self._handle(event)

    async def _handle(self, event: object) -> None:
        if isinstance(event, Ping):
            self._messages_received += 1
            self._pending.append(PingReceived(bytes(event.payload)))
            try:
                await self._send_event(event.response())
            except WebSocketClosed:
                pass  # reported through receive() on the next call
        elif isinstance(event, Pong):
            self._messages_received += 1
            self._pending.append(PongReceived(bytes(event.payload)))
        elif isinstance(event, TextMessage | BytesMessage):
            self._fragments.append(event.data)
            self._fragment_bytes += len(event.data)
            if self._fragment_bytes > self._max_message_bytes:
                self._fragments.clear()
                await self.close(1009, "message too big")
                return
            if event.message_finished:
                self._messages_received += 1
                parts, self._fragments, self._fragment_bytes = self._fragments, [], 0
                if isinstance(event, TextMessage):
                    self._pending.append(TextReceived("".join(str(p) for p in parts)))
                else:
                    self._pending.append(
                        BytesReceived(
                            b"".join(p.encode() if isinstance(p, str) else bytes(p) for p in parts)
                        )
                    )
        elif isinstance(event, CloseConnection):
            self._messages_received += 1
            if self._closed is None:
                self._closed = WebSocketClosed(event.code, event.reason or "", by_peer=True)
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    with trio.move_on_after(_CLOSE_SEND_TIMEOUT_S):
                        async with self._send_lock:
                            if self._ws.state is ConnectionState.REMOTE_CLOSING:
                                try:
                                    await self._write(self._ws.send(event.response()), frames=1)
                                except WebSocketClosed:
                                    pass
            await self._stream.aclose()

    async def _lost(self, reason: str) -> None:
        if self._closed is None:
            self._closed = WebSocketClosed(1006, reason, by_peer=True)
        await self._stream.aclose()

    # -- sending -----------------------------------------------------------------------------

    async def send_text(self, text: str) -> None:
        await self.send_texts((text,))

    async def send_texts(self, texts: Iterable[str]) -> None:
        """Send several text messages with one ``send_all`` (the fast path under backlog).

        Frames are built by :func:`encode_text_frame` rather than ``wsproto.send``:
        the bytes are identical (no extension is ever negotiated and the server
        never fragments, so wsproto's outbound state is untouched), and it is
        ~8x cheaper, which is most of what a fast sender spends per frame.
        """
        async with self._send_lock:
            self._raise_if_closed()
            chunks = [encode_text_frame(text.encode()) for text in texts]
            await self._write(b"".join(chunks), frames=len(chunks))

    async def ping(self, payload: bytes) -> None:
        await self._send_event(Ping(payload=payload))

    async def send_raw_bytes(self, data: bytes) -> None:
        """Write bytes that bypass framing (for faults that corrupt the wire itself)."""
        async with self._send_lock:
            self._raise_if_closed()
            await self._write(data, frames=0)

    async def _send_event(self, event: Ping | Pong) -> None:
        # Bytes are produced under the lock so that frames reach the wire in the
        # order wsproto produced them (a close frame is always last).
        async with self._send_lock:
            self._raise_if_closed()
            await self._write(self._ws.send(event), frames=1)

    async def _write(self, data: bytes, *, frames: int) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if self._closed is None:
                self._closed = WebSocketClosed(1006, "connection lost", by_peer=True)
            raise self._closed from exc
        self._frames_sent += frames
        self._bytes_sent += len(data)

    def _raise_if_closed(self) -> None:
        if self._closed is not None:
            raise self._closed
        if self._ws.state is not ConnectionState.OPEN:
            raise WebSocketClosed(1006, f"websocket state {self._ws.state.name}", by_peer=True)

    # -- closing -----------------------------------------------------------------------------

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame (best effort, bounded wait) and drop the TCP connection.

        Idempotent. The peer's close reply is not awaited: the fakes close
        connections to provoke client behaviour, not to be polite.
        """
        if self._closed is not None:
            await self._stream.aclose()
            return
        self._closed = WebSocketClosed(code, reason, by_peer=False)
        try:
            with trio.move_on_after(_CLOSE_SEND_TIMEOUT_S):
                async with self._send_lock:
                    if self._ws.state is ConnectionState.OPEN:
                        frame = self._ws.send(CloseConnection(code=code, reason=reason))
                        await self._stream.send_all(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await self._stream.aclose()

    async def abort(self, reason: str = "aborted") -> None:
        """Drop the TCP connection without a close frame (the peer sees 1006)."""
        if self._closed is None:
            self._closed = WebSocketClosed(1006, reason, by_peer=False)
        await self._stream.aclose()


def encode_text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented text frame (server to client, RFC 6455 5.2)."""
    length = len(payload)
    if length < 126:
        return _HEADER_SHORT[length] + payload
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big") + payload
    return b"\x81\x7f" + length.to_bytes(8, "big") + payload


_HEADER_SHORT = [bytes((0x81, n)) for n in range(126)]


class IncomingWebSocket:
    """A connection whose opening handshake has been read but not answered."""

    def __init__(
        self,
        stream: trio.SocketStream,
        ws: WSConnection,
        request: WebSocketRequest,
        *,
        max_message_bytes: int,
    ) -> None:
        self.request = request
        self._stream = stream
        self._ws = ws
        self._max_message_bytes = max_message_bytes
        self.socket: ServerWebSocket | None = None
        self.answered = False

    async def accept(self) -> ServerWebSocket:
        if self.answered:
            raise RuntimeError("handshake already answered")
        self.answered = True
        await self._stream.send_all(self._ws.send(AcceptConnection()))
        self.socket = ServerWebSocket(
            self._stream, self._ws, self.request, max_message_bytes=self._max_message_bytes
        )
        return self.socket

    async def reject(
        self, status: int, body: bytes = b"", content_type: str = "application/json"
    ) -> None:
        if self.answered:
            raise RuntimeError("handshake already answered")
        self.answered = True
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        data = self._ws.send(RejectConnection(status_code=status, headers=headers, has_body=True))
        data += self._ws.send(RejectData(data=body))
        await self._stream.send_all(data)


WebSocketHandler = Callable[[IncomingWebSocket], Awaitable[None]]


async def serve_websocket(
    handler: WebSocketHandler,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_message_bytes: int = 1 << 20,
    handshake_timeout_s: float = 10.0,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve WebSocket connections until cancelled; ``task_status.started`` gets the bound port."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_port: int = listeners[0].socket.getsockname()[1]
    task_status.started(bound_port)
    await trio.serve_listeners(
        partial(
            _serve_connection,
            handler,
            max_message_bytes=max_message_bytes,
            handshake_timeout_s=handshake_timeout_s,
        ),
        listeners,
    )


async def _read_handshake(stream: trio.SocketStream, ws: WSConnection) -> Request | None:
    while True:
        data = await stream.receive_some(_RECEIVE_CHUNK)
        if not data:
            return None
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, Request):
                return event


async def _serve_connection(
    handler: WebSocketHandler,
    stream: trio.SocketStream,
    *,
    max_message_bytes: int,
    handshake_timeout_s: float,
) -> None:
    ws = WSConnection(ConnectionType.SERVER)
    incoming: IncomingWebSocket | None = None
    try:
        event: Request | None = None
        with trio.move_on_after(handshake_timeout_s):
            try:
                event = await _read_handshake(stream, ws)
            except RemoteProtocolError as exc:
                # wsproto suggests the rejection to send for a bad handshake.
                hint = exc.event_hint
                if isinstance(hint, RejectConnection):
                    await stream.send_all(ws.send(hint))
                return
        if event is None:
            return
        split = urlsplit(event.target)
        request = WebSocketRequest(
            target=event.target,
            path=split.path,
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers={
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.extra_headers
            },
        )
        incoming = IncomingWebSocket(stream, ws, request, max_message_bytes=max_message_bytes)
        await handler(incoming)
        if not incoming.answered:
            await incoming.reject(500, b'{"msg":"handler did not answer the handshake"}')
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the peer went away; nothing to report to anyone
    finally:
        if incoming is not None and incoming.socket is not None:
            await incoming.socket.abort("handler returned")
        else:
            await stream.aclose()
