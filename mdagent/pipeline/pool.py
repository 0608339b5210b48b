"""The connections of one source, each held open by its own task.

A source's streams ride on its connections: one, several read as one for a
Binance source larger than one connection's limits (the provider's
connection plan, ``providers/merged.py``), and one more while rotating
(``rotation.py``). Each connection lives in a holder task in the stream
task's nursery until its close event is set, so a connection can outlive the
code that opened it (the replacement opens while the old one is still read)
and the two can be closed in either order.

Still per source: connections are not shared between sources (Binance
allows 1,024 streams per connection, Polygon one connection per key; a
source's plan already fills its connections).
"""

from __future__ import annotations

import structlog
import trio

from mdagent.config import SourceConfig
from mdagent.errors import StreamError
from mdagent.providers.base import StreamConnection, StreamHalf

__all__ = ["ConnectionPool"]

log = structlog.get_logger("mdagent.stream")


class ConnectionPool:
    """Opens a source's connections in holder tasks of ``nursery``.

    ``open`` returns the connection and the event that closes it. Connect
    errors (``StreamError``, ``AuthFailed``) reach ``open``'s caller; an
    error while closing is logged, never raised (the data was read already).
    """

    def __init__(self, adapter: StreamHalf, nursery: trio.Nursery) -> None:
        self._adapter = adapter
        self._nursery = nursery

    async def open(self, source: SourceConfig) -> tuple[StreamConnection, trio.Event]:
        """Open, authenticate and subscribe a connection for ``source`` (the provider's connect)."""
        opened: tuple[StreamConnection, trio.Event] = await self._nursery.start(self._hold, source)
        return opened

    async def _hold(
        self,
        source: SourceConfig,
        *,
        task_status: trio.TaskStatus[tuple[StreamConnection, trio.Event]],
    ) -> None:
        close = trio.Event()
        started = False
        try:
            async with self._adapter.connect(source) as conn:
                task_status.started((conn, close))
                started = True
                await close.wait()
        except StreamError as exc:
            if not started:
                raise  # to open()'s caller: the connect failed
            log.info("stream.close_error", error=str(exc))
