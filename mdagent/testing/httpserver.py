"""A minimal HTTP/1.1 server on trio + h11, for the fake venues' REST APIs.

Scope: small JSON request/response APIs on loopback. Keep-alive is supported
(httpx pools connections), request bodies are bounded, and a response can be
trickled out in chunks to simulate a slow server. It is not a general web
server: no TLS, no pipelining guarantees beyond what h11 gives, no streaming
request bodies.

A handler is ``async def handler(request: HttpRequest) -> HttpResponse``. An
exception escaping a handler is a bug in the fake and is deliberately not
turned into a 500: it propagates and stops the server, so the test fails loudly.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs
import h11
import orjson
import trio

__all__ = [
    "HttpHandler",
    "HttpRequest",
    "HttpResponse",
    "json_response",
    "serve_http",
]

_RECEIVE_CHUNK = 64 * 1024


@attrs.frozen
class HttpRequest:
    """One parsed request. Header names are lower-case; repeated query keys keep the last value."""

    method: str
    target: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes


@attrs.frozen
class HttpResponse:
    """A response. With ``chunk_size > 0`` the body is written in pieces of that
    size with ``chunk_delay_s`` between them (a slow server, as a client sees it)."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/json;charset=UTF-8"
    chunk_size: int = 0
    chunk_delay_s: float = 0.0


HttpHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]


def json_response(
    status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()
) -> HttpResponse:
    """A JSON response (orjson-encoded)."""
    return HttpResponse(status=status, body=orjson.dumps(payload), headers=headers)


async def serve_http(
    handler: HttpHandler,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_body_bytes: int = 1 << 20,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` until cancelled. ``task_status.started`` gets the bound port
    (useful with ``port=0``)."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_port: int = listeners[0].socket.getsockname()[1]
    task_status.started(bound_port)
    await trio.serve_listeners(
        partial(_serve_connection, handler, max_body_bytes=max_body_bytes), listeners
    )


async def _serve_connection(
    handler: HttpHandler, stream: trio.SocketStream, *, max_body_bytes: int
) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            try:
                request = await _read_request(stream, conn, max_body_bytes)
            except h11.RemoteProtocolError as exc:
                await _send_error(stream, conn, exc.error_status_hint, str(exc))
                return
            except _BodyTooLarge:
                await _send_error(stream, conn, 413, "request body too large")
                return
            if request is None:
                return
            response = await handler(request)
            await _send_response(stream, conn, response)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        # The client went away mid-exchange: normal for keep-alive pools and
        # for clients that time out on a deliberately slow response.
        pass
    finally:
        await stream.aclose()


class _BodyTooLarge(Exception):
    pass


async def _next_event(stream: trio.SocketStream, conn: h11.Connection) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await stream.receive_some(_RECEIVE_CHUNK)
        conn.receive_data(data)  # b"" marks EOF, which h11 turns into ConnectionClosed


async def _read_request(
    stream: trio.SocketStream, conn: h11.Connection, max_body_bytes: int
) -> HttpRequest | None:
    event = await _next_event(stream, conn)
    if isinstance(event, h11.ConnectionClosed):
        return None
    if not isinstance(event, h11.Request):
        raise h11.RemoteProtocolError(f"expected a request, got {type(event).__name__}")
    body = bytearray()
    while True:
        part = await _next_event(stream, conn)
        if isinstance(part, h11.Data):
            body += part.data
            if len(body) > max_body_bytes:
                raise _BodyTooLarge
        elif isinstance(part, h11.EndOfMessage):
            break
        else:
            raise h11.RemoteProtocolError("connection closed inside a request body")
    target = event.target.decode("ascii", "replace")
    split = urlsplit(target)
    return HttpRequest(
        method=event.method.decode("ascii"),
        target=target,
        path=split.path,
        query=dict(parse_qsl(split.query, keep_blank_values=True)),
        headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers},
        body=bytes(body),
    )


async def _send_response(
    stream: trio.SocketStream, conn: h11.Connection, response: HttpResponse
) -> None:
    headers = [
        ("Content-Type", response.content_type),
        ("Content-Length", str(len(response.body))),
        *response.headers,
    ]
    head = conn.send(h11.Response(status_code=response.status, headers=headers))
    if response.chunk_size <= 0:
        body = conn.send(h11.Data(data=response.body)) if response.body else b""
        tail = conn.send(h11.EndOfMessage())
        # One write for the whole small response: fewer syscalls, no Nagle stalls.
        await stream.send_all(head + body + tail)
        return
    await stream.send_all(head)
    for start in range(0, len(response.body), response.chunk_size):
        await trio.sleep(response.chunk_delay_s)
        piece = response.body[start : start + response.chunk_size]
        await stream.send_all(conn.send(h11.Data(data=piece)))
    await stream.send_all(conn.send(h11.EndOfMessage()))


async def _send_error(
    stream: trio.SocketStream, conn: h11.Connection, status: int, msg: str
) -> None:
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = orjson.dumps({"code": -1000, "msg": msg})
    headers = [
        ("Content-Type", "application/json;charset=UTF-8"),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
    ]
    try:
        data = conn.send(h11.Response(status_code=status, headers=headers))
        data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
    except h11.LocalProtocolError:
        return
    await stream.send_all(data)
