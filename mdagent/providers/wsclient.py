"""A lean WebSocket client for the hot path: one socket read, many messages.

Why not trio-websocket here: its reader task hands every message through a
memory channel to ``get_message()``, a scheduler round trip per frame. On a
2-core machine that caps one connection near 40-50k frames/s and, profiled
inside the agent, cost about a third of the GIL time. Here the stream task
reads the socket itself and every complete frame in the bytes of that read
is split off in one pass, so a burst of frames costs one await.

Why the frames are split here and not by wsproto: wsproto builds a frame
object, a message event and an incremental UTF-8 decoder per frame; profiled
in the agent (issue 14) that was about half of the main thread's time. A
server's frames are never masked (RFC 6455 5.1), so a complete unfragmented
text or binary frame is a header and a slice: :func:`_split_frames` takes
those itself (a text payload is decoded strictly: invalid UTF-8 is refused
with 1007 as wsproto would). Every other frame (ping, pong, close, the
fragments of a message and the control frames between them, masked frames,
frames with RSV bits or unknown opcodes) is handed to wsproto whole and in
order, so the protocol's state, errors and answers stay wsproto's. While
wsproto holds the start of a fragmented message, every frame goes to it
until the message ends. The handshake and everything sent are wsproto's.

Memory bound: one socket read (64 KiB) plus at most one frame of up to
``max_message_bytes`` waiting for its end; a message being reassembled by
wsproto is bounded by ``max_message_bytes`` too.

Frames the protocol must refuse close the connection with the RFC 6455 code
and say why (:class:`FrameRefused`): 1007 for invalid UTF-8 in a text frame,
1009 for a message over ``max_message_bytes`` (refused from the frame's
header, before its payload is buffered). The refusal keeps the first bytes
received for the refused message (for 1007 by wsproto, in a fragmented
message, of the frame that held it: wsproto does not hand over the bytes of a
frame it could not decode) for a dead letter.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from mdagent.errors import FrameRefused, StreamError

if TYPE_CHECKING:
    from mdagent.providers.base import Source

RECEIVE_CHUNK = 64 * 1024
# RFC 6455 5.2 opcodes and header bits.
_OP_CONTINUATION, _OP_TEXT, _OP_BINARY = 0x0, 0x1, 0x2
_FIN = 0x80
_MASKED = 0x80
# The longest frame header: 2 bytes, a 64-bit length, a masking key.
_MAX_HEADER = 14
# Control frames we must answer (pong, close) are tiny; a peer that does not
# read them within this long is gone.
CONTROL_SEND_TIMEOUT_S = 5.0


class WebSocketError(Exception):
    """Base of this module's errors; the adapters translate them to StreamError."""


class HandshakeFailed(WebSocketError):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"server rejected the upgrade: HTTP {status} {body[:200]!r}")
        self.status = status


class WebSocketClosed(WebSocketError):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


class MessageTooBig(WebSocketError):
    pass


class TlsHandshakeFailed(WebSocketError):
    """The TLS handshake failed; the message carries the ssl module's reason
    (e.g. ``certificate verify failed: self-signed certificate``)."""


def tls_context(ca_file: str = "") -> ssl.SSLContext:
    """A verifying client context: the system's CAs, or only those in ``ca_file`` (PEM)."""
    return ssl.create_default_context(cafile=ca_file or None)


# How much of a refused frame a dead letter keeps.
REFUSED_HEAD_BYTES = 256


class FrameRefusedByUs(WebSocketClosed):
    """We closed the connection because a frame broke the protocol (1007, 1009)."""

    def __init__(self, code: int, reason: str, head: bytes) -> None:
        super().__init__(code, reason)
        self.head = head[:REFUSED_HEAD_BYTES]


class WebSocketClient:
    def __init__(self, stream: trio.abc.Stream, ws: WSConnection, max_message_bytes: int) -> None:
        self._stream = stream
        self._ws = ws
        self._max = max_message_bytes
        self._ready: list[str | bytes] = []
        self._partial: list[str | bytes] = []
        self._partial_size = 0
        self._outgoing = bytearray()
        self._closed: WebSocketClosed | None = None
        # Bytes of an incomplete frame (and what came after it in the read),
        # and how many bytes that frame needs before splitting is worth trying.
        self._pending = bytearray()
        self._pending_need = 0
        # wsproto holds the start of a fragmented message: frames go to it.
        self._in_fragmented = False
        # A control message (sent by another task) and a pong must not
        # interleave their bytes on the socket.
        self._send_lock = trio.Lock()

    async def receive_batch(self) -> list[str | bytes]:
        """Every complete message available now (at least one); waits for the next read."""
        while True:
            # Answers (pong, our close) go out before anything is returned or
            # raised, also for frames split during the upgrade (connect_websocket).
            if self._outgoing:
                await self._flush_control()
            if self._ready:
                break
            if self._closed is not None:
                raise self._closed
            data = await self._stream.receive_some(RECEIVE_CHUNK)
            if not data:
                self._closed = WebSocketClosed(1006, "connection lost")
                continue
            self._feed(data)
        ready, self._ready = self._ready, []
        return ready

    def unread(self, messages: list[str | bytes]) -> None:
        """Put messages back to be returned first by the next receive_batch()."""
        self._ready[:0] = messages

    async def send_text(self, text: str) -> None:
        if self._closed is not None:
            raise self._closed
        try:
            data = self._ws.send(TextMessage(data=text))
        except LocalProtocolError as exc:
            raise WebSocketClosed(1006, f"cannot send: {exc}") from exc
        async with self._send_lock:
            await self._stream.send_all(data)

    async def aclose(self) -> None:
        """Close politely if we can, then the socket; safe to call twice, even when cancelled."""
        try:
            if self._ws.state is ConnectionState.OPEN:
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    await self._stream.send_all(self._ws.send(CloseConnection(code=1000)))
        except (trio.BrokenResourceError, trio.ClosedResourceError, LocalProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(self._stream)

    def _feed(self, data: bytes | bytearray) -> None:
        """Split the frames of ``data`` (after any incomplete frame kept from before)."""
        pending = self._pending
        if pending:
            pending += data
            if len(pending) < self._pending_need:
                return
            used = self._split_frames(pending)
            del pending[:used]
        else:
            used = self._split_frames(data)
            if used < len(data):
                pending += memoryview(data)[used:]

    def _split_frames(self, data: bytes | bytearray) -> int:
        """Take every complete frame of ``data``; return how many bytes were used.

        Unfragmented, unmasked text/binary frames with no RSV bits are taken
        here; any other frame goes to wsproto (see the module's docstring).
        Stops at an incomplete frame (setting how many bytes it needs) or
        when the connection is closed or refused.
        """
        pos, size, ready, limit = 0, len(data), self._ready, self._max
        self._pending_need = 0
        while self._closed is None and size - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            # The frame of nearly every read, in the fewest steps: a whole text
            # message (FIN, no RSV bits), unmasked, of up to 64 KiB, within the
            # limit, complete in ``data``, outside a fragmented message. Any
            # other frame (or one not complete yet) takes the full path below.
            if b0 == _FIN | _OP_TEXT and b1 <= 126 and not self._in_fragmented:
                if b1 < 126:
                    start, end = pos + 2, pos + 2 + b1
                elif size - pos >= 4:
                    start = pos + 4
                    end = start + (data[pos + 2] << 8 | data[pos + 3])
                else:
                    start = end = size + 1  # the length is not here yet
                if end <= size and end - start <= limit:
                    try:
                        ready.append(data[start:end].decode())
                    except UnicodeDecodeError:
                        pass  # refused (1007) by the full path
                    else:
                        pos = end
                        continue
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                start = pos + 4
                if start > size:
                    break
                length = int.from_bytes(data[pos + 2 : start], "big")
            elif length == 127:
                start = pos + 10
                if start > size:
                    break
                length = int.from_bytes(data[pos + 2 : start], "big")
            if b1 & _MASKED:
                start += 4
            end = start + length
            opcode = b0 & 0x0F
            fast = b0 & 0xF0 == _FIN and b1 < _MASKED and not self._in_fragmented
            plain = b0 & 0x70 == 0 and b1 < _MASKED  # no RSV bits, not masked
            if (
                plain
                and opcode <= _OP_BINARY
                and (
                    length > limit or (self._in_fragmented and self._partial_size + length > limit)
                )
            ):
                # Refused from the header: never buffer more than a dead letter's head.
                want = start + min(length, REFUSED_HEAD_BYTES)
                if want > size:
                    self._pending_need = want - pos
                    break
                have = want
                head = (
                    bytes(data[start:have])
                    if fast
                    else _head(self._partial[0] if self._partial else b"")
                )
                if fast:
                    self._refuse(1009, f"message of {length} bytes exceeds {limit}", head)
                else:
                    self._partial, self._partial_size = [], 0
                    self._refuse(
                        1009, f"message exceeds {limit} bytes", head or bytes(data[start:have])
                    )
                return size
            if end > size:
                if end - pos > limit + _MAX_HEADER:
                    # A control, masked or RSV frame claiming more than a message
                    # may hold: wsproto refuses it from its header alone.
                    self._feed_protocol(bytes(data[pos:start]))
                    if self._closed is None:
                        self._refuse(1009, f"frame of {length} bytes exceeds {limit}", b"")
                    return size
                self._pending_need = end - pos
                break
            if fast and opcode == _OP_TEXT:
                try:
                    ready.append(str(data[start:end], "utf-8"))
                except UnicodeDecodeError as exc:
                    self._refuse(
                        1007, f"invalid UTF-8 in a text frame: {exc.reason}", bytes(data[start:end])
                    )
                    return size
            elif fast and opcode == _OP_BINARY:
                ready.append(bytes(data[start:end]))
            else:
                if opcode in (_OP_TEXT, _OP_BINARY):
                    self._in_fragmented = not b0 & _FIN
                elif opcode == _OP_CONTINUATION and b0 & _FIN:
                    self._in_fragmented = False
                self._feed_protocol(bytes(data[pos:end]))
            pos = end
        if self._closed is not None:
            return size
        return pos

    def _feed_protocol(self, data: bytes) -> None:
        """Whole frames (or the bytes after the upgrade) through wsproto, in order."""
        self._ws.receive_data(data)
        try:
            for event in self._ws.events():
                kind = type(event)
                if kind is TextMessage or kind is BytesMessage:
                    self._message(event.data, event.message_finished)  # type: ignore[attr-defined]
                elif kind is Ping:
                    self._outgoing += self._ws.send(event.response())  # type: ignore[attr-defined]
                elif kind is CloseConnection:
                    code, reason = event.code, event.reason or ""  # type: ignore[attr-defined]
                    if self._ws.state is ConnectionState.REMOTE_CLOSING:
                        self._outgoing += self._ws.send(event.response())  # type: ignore[attr-defined]
                        self._closed = WebSocketClosed(code, reason)
                    elif self._ws.state is ConnectionState.OPEN:
                        # Not the peer's close: wsproto refused what it received
                        # (1007 invalid UTF-8, 1002 a bad frame). Close with that code.
                        self._refuse(code, reason, data)
                    else:
                        self._closed = WebSocketClosed(code, reason)
                if self._closed is not None:
                    break
        except RemoteProtocolError as exc:
            self._closed = WebSocketClosed(1002, f"protocol error: {exc}")

    def _refuse(self, code: int, reason: str, head: bytes) -> None:
        """Close the connection with ``code`` because of a frame we must not accept."""
        if self._closed is not None:
            return
        self._closed = FrameRefusedByUs(code, reason, bytes(head))
        if self._ws.state is ConnectionState.OPEN:
            self._outgoing += self._ws.send(CloseConnection(code=code, reason=reason[:120]))

    def _message(self, data: str | bytes, finished: bool) -> None:
        if finished and not self._partial:
            if len(data) > self._max:
                self._refuse(1009, f"message of {len(data)} bytes exceeds {self._max}", _head(data))
                return
            self._ready.append(data)
            return
        self._partial.append(data)
        self._partial_size += len(data)
        if self._partial_size > self._max:
            head = _head(self._partial[0])
            self._partial, self._partial_size = [], 0
            self._refuse(1009, f"message exceeds {self._max} bytes", head)
            return
        if finished:
            parts, self._partial, self._partial_size = self._partial, [], 0
            joined: str | bytes = "".join(parts) if isinstance(parts[0], str) else b"".join(parts)  # type: ignore[arg-type]
            self._ready.append(joined)

    async def _flush_control(self) -> None:
        # Shielded: a pong half-sent by a cancelled send_all would corrupt the stream.
        data, self._outgoing = bytes(self._outgoing), bytearray()
        with trio.CancelScope(shield=True), trio.move_on_after(CONTROL_SEND_TIMEOUT_S):
            try:
                async with self._send_lock:
                    await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._closed = self._closed or WebSocketClosed(
                    1006, "connection lost while answering"
                )


def _head(data: str | bytes) -> bytes:
    """The first bytes of a message, as received (text re-encoded)."""
    part = data[:REFUSED_HEAD_BYTES]
    return part.encode("utf-8", "surrogatepass") if isinstance(part, str) else bytes(part)


async def connect_websocket(
    url: str, *, max_message_bytes: int = 1 << 20, ca_file: str = ""
) -> WebSocketClient:
    """Connect and upgrade; the caller sets the deadline and owns ``aclose()``.

    ``wss://`` verifies the server against the system's CAs, or against
    ``ca_file`` when given. Raises WebSocketError (TlsHandshakeFailed with
    the certificate error's text), OSError, ValueError for a bad URL.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    stream: trio.abc.Stream = await trio.open_tcp_stream(parts.hostname, port)
    try:
        if secure:
            stream = trio.SSLStream(stream, tls_context(ca_file), server_hostname=parts.hostname)
            try:
                await stream.do_handshake()
            except trio.BrokenResourceError as exc:
                # trio's error has no text of its own; the reason is its cause.
                reason = exc.__cause__ or exc
                raise TlsHandshakeFailed(f"TLS handshake failed: {reason}") from exc
        ws = WSConnection(ConnectionType.CLIENT)
        host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        await stream.send_all(ws.send(Request(host=host, target=target)))
        client = WebSocketClient(stream, ws, max_message_bytes)
        await _read_upgrade(stream, ws, client)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return client


async def _read_upgrade(stream: trio.abc.Stream, ws: WSConnection, client: WebSocketClient) -> None:
    """Read the server's answer to the upgrade through wsproto.

    Only the response head goes to wsproto: frames that came in the same
    read as the 101 response are the client's to split (wsproto never sees
    a data frame that the client takes itself). A rejection's body is
    wsproto's too.
    """
    rejected: RejectConnection | None = None
    body = b""
    tail = b""  # the last bytes of the head so far, to find its end across reads
    head_done = False
    while True:
        data = bytes(await stream.receive_some(RECEIVE_CHUNK))
        if not data:
            raise WebSocketClosed(1006, "connection closed during the upgrade")
        after = b""
        if not head_done:
            joined = tail + data
            end = joined.find(b"\r\n\r\n")
            if end >= 0:
                cut = end + 4 - len(tail)
                data, after = data[:cut], data[cut:]
                head_done = True
            else:
                tail = joined[-3:]
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                client._feed(after)
                return
            if isinstance(event, RejectConnection):
                rejected = event
                if not event.has_body:
                    raise HandshakeFailed(event.status_code, b"")
                if after:
                    ws.receive_data(after)
                    after = b""
            elif isinstance(event, RejectData) and rejected is not None:
                body += event.data
                if event.body_finished:
                    raise HandshakeFailed(rejected.status_code, body)


class WebSocketStream:
    """A provider stream over a WebSocketClient (the StreamConnection protocol).

    Translates this module's errors into StreamError at the provider boundary.
    Providers whose frames can ask for a reconnect override reconnect_reason().
    """

    def __init__(self, ws: WebSocketClient) -> None:
        self._ws = ws

    async def receive_batch(self) -> list[str | bytes]:
        try:
            return await self._ws.receive_batch()
        except FrameRefusedByUs as exc:
            raise FrameRefused(exc.code, exc.reason, exc.head) from exc
        except WebSocketError as exc:
            raise StreamError(f"connection closed: {exc}") from exc
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise StreamError(f"connection lost: {exc}") from exc

    def reconnect_reason(self, frame: str | bytes) -> str | None:
        return None

    async def resubscribe(self, old: Source, new: Source) -> bool:
        """Move the live subscription from ``old``'s symbols to ``new``'s; False: not here.

        This default cannot (the subscription is fixed at connect): the caller
        reconnects. Providers that subscribe by message override it.
        """
        return False

    async def renew(self, streams: Sequence[tuple[str, str]]) -> bool:
        """Subscribe streams again; this default cannot (the caller replaces the connection)."""
        return False
