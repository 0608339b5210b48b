"""/metrics, /healthz and /readyz on a small HTTP/1.1 server (trio + h11).

Loopback by default: the endpoints expose operational detail, not data.
"""

from __future__ import annotations

import errno
import json
import math
import resource

import h11
import structlog
import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mdagent.listen import open_listeners
from mdagent.pipeline.health import Health
from mdagent.pipeline.metrics import Metrics

log = structlog.get_logger("mdagent.http")

_MAX_REQUEST_BYTES = 16 * 1024
# A client gets this long to send its request head; the endpoints answer
# from memory, so an honest scraper needs milliseconds.
HEADER_TIMEOUT_S = 5.0
_SEND_TIMEOUT_S = 10.0
# After an error response, read (and drop) what the client is still sending
# for this long, so that closing does not reset the connection before the
# client has read the response (a 431 must arrive, not an RST).
_LINGER_S = 1.0
_LINGER_BYTES = 4 << 20
# Concurrent connections; at the cap the oldest is closed to make room, so a
# flood of idle connections can neither exhaust file descriptors (streams
# and the database keep theirs) nor lock out a real scrape.
DEFAULT_MAX_CONNECTIONS = 128
# accept() failing for lack of descriptors: retry after this, log at most
# once per _ACCEPT_LOG_EVERY_S (not one traceback per attempt).
_ACCEPT_RETRY_S = 0.1
_ACCEPT_LOG_EVERY_S = 60.0
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def connection_cap(soft_fd_limit: int) -> int:
    """Concurrent HTTP connections allowed under ``soft_fd_limit`` descriptors: at most
    a quarter of them, at most DEFAULT_MAX_CONNECTIONS, at least 4."""
    return max(4, min(DEFAULT_MAX_CONNECTIONS, soft_fd_limit // 4))


class HealthServer:
    """The agent's HTTP endpoints. ``max_connections`` defaults to connection_cap()
    of the process's file limit at serve time."""

    def __init__(
        self, health: Health, metrics: Metrics, *, max_connections: int | None = None
    ) -> None:
        self.health = health
        self.metrics = metrics
        self.port: int | None = None
        self.max_connections = max_connections
        # Open connections in accept order (oldest first), by their cancel scope.
        self._open: dict[trio.CancelScope, None] = {}
        self._accept_errors_logged_at = -math.inf

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind ``host:port`` and serve until cancelled; ``task_status.started(bound port)``.

        Raises ListenError (one line: address and cause) when the port cannot be bound.
        """
        await self.serve_on(
            await open_listeners(host, port, "http.listen"), task_status=task_status
        )

    async def serve_on(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on already bound ``listeners`` until cancelled."""
        if self.max_connections is None:
            self.max_connections = connection_cap(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        self.port = listeners[0].socket.getsockname()[1]
        log.info("http.listening", port=self.port, max_connections=self.max_connections)
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
            task_status.started(self.port)

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _RESOURCE_ERRNOS:
                        raise
                    self._log_accept_error(exc)
                    await trio.sleep(_ACCEPT_RETRY_S)
                    continue
                self._make_room()
                nursery.start_soon(self._serve_one, stream)

    def _log_accept_error(self, exc: OSError) -> None:
        now = trio.current_time()
        if now - self._accept_errors_logged_at >= _ACCEPT_LOG_EVERY_S:
            self._accept_errors_logged_at = now
            log.warning("http.accept_failed", error=exc.strerror, retry_s=_ACCEPT_RETRY_S)

    def _make_room(self) -> None:
        assert self.max_connections is not None
        live = [scope for scope in self._open if not scope.cancel_called]
        for scope in live[: max(0, len(live) - self.max_connections + 1)]:
            scope.cancel()

    async def _serve_one(self, stream: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            self._open[scope] = None
            try:
                await self._handle(stream)
            finally:
                del self._open[scope]
        await trio.aclose_forcefully(stream)

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_REQUEST_BYTES)
        request = None
        try:
            with trio.move_on_after(HEADER_TIMEOUT_S):
                request = await self._read_request(stream, conn)
            if request is None:
                return
            status, ctype, body = await self.answer(
                request.method.decode(), request.target.decode()
            )
            with trio.move_on_after(_SEND_TIMEOUT_S):
                await self._send(stream, conn, status, ctype, body)
        except h11.RemoteProtocolError as exc:
            # 431 for an oversized head, 400 for garbage: said, not a reset.
            with trio.move_on_after(_SEND_TIMEOUT_S):
                await self._send(
                    stream,
                    h11.Connection(h11.SERVER),
                    exc.error_status_hint,
                    "text/plain",
                    f"{exc}\n".encode(),
                    linger=True,
                )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    async def _read_request(
        self, stream: trio.SocketStream, conn: h11.Connection
    ) -> h11.Request | None:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(4096)
                conn.receive_data(data)
                if not data:
                    return None
                continue
            return event if isinstance(event, h11.Request) else None

    async def _send(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        status: int,
        ctype: str,
        body: bytes,
        *,
        linger: bool = False,
    ) -> None:
        headers = [
            ("content-type", ctype),
            ("content-length", str(len(body))),
            ("connection", "close"),
        ]
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
        await stream.send_all(conn.send(h11.Data(data=body)) or b"")
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        if linger:
            await stream.send_eof()
            drained = 0
            with trio.move_on_after(_LINGER_S):
                while drained < _LINGER_BYTES and (data := await stream.receive_some(65536)):
                    drained += len(data)

    async def answer(self, method: str, target: str) -> tuple[int, str, bytes]:
        """The response (status, content type, body) to one request; see respond()."""
        return self.respond(method, target)

    def respond(self, method: str, target: str) -> tuple[int, str, bytes]:
        path = target.split("?", 1)[0]
        if method != "GET":
            return 405, "text/plain", b"method not allowed\n"
        if path == "/metrics":
            self.metrics.ready.set(1 if self.health.ready else 0)
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.metrics.registry)
        if path == "/healthz":
            return 200, "application/json", b'{"status":"ok"}\n'
        if path == "/readyz":
            problems = self.health.problems()
            streams = self.health.per_stream.detail()
            body = (
                json.dumps({"ready": not problems, "problems": problems, "streams": streams}) + "\n"
            ).encode()
            return (200 if not problems else 503), "application/json", body
        return 404, "text/plain", b"not found\n"
