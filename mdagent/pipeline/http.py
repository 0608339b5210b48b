"""/metrics, /healthz and /readyz on a small HTTP/1.1 server (trio + h11).

Loopback by default: the endpoints expose operational detail, not data.
"""

from __future__ import annotations

import json

import h11
import structlog
import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mdagent.listen import open_listeners
from mdagent.pipeline.health import Health
from mdagent.pipeline.metrics import Metrics

log = structlog.get_logger("mdagent.http")

_MAX_REQUEST_BYTES = 16 * 1024
_REQUEST_TIMEOUT_S = 10.0


class HealthServer:
    def __init__(self, health: Health, metrics: Metrics) -> None:
        self.health = health
        self.metrics = metrics
        self.port: int | None = None

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
        self.port = listeners[0].socket.getsockname()[1]
        log.info("http.listening", port=self.port)
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_REQUEST_BYTES)
        try:
            with trio.move_on_after(_REQUEST_TIMEOUT_S):
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(4096)
                        conn.receive_data(data)
                        if not data:
                            return
                        continue
                    if isinstance(event, h11.Request):
                        status, ctype, body = self.respond(
                            event.method.decode(), event.target.decode()
                        )
                        headers = [
                            ("content-type", ctype),
                            ("content-length", str(len(body))),
                            ("connection", "close"),
                        ]
                        await stream.send_all(
                            conn.send(h11.Response(status_code=status, headers=headers)) or b""
                        )
                        await stream.send_all(conn.send(h11.Data(data=body)) or b"")
                        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                    return
        except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await stream.aclose()

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
            body = json.dumps({"ready": not problems, "problems": problems}).encode() + b"\n"
            return (200 if not problems else 503), "application/json", body
        return 404, "text/plain", b"not found\n"
