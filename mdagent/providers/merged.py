"""Several WebSocket connections of one source read as one StreamConnection.

Used when a source's streams do not fit one connection (Binance: 1,024
streams or about 8,000 URL characters, ``providers/binance/plan.py``). One
reader task per connection hands its batches over an unbuffered channel, so
at most one batch per connection is in hand (the bound of a single
connection, times the number of connections). The first connection to fail
ends them all: the stream task reconnects the source as a whole, and the
normalizer's gap detection covers the hole as after any reconnect.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

import trio

from mdagent.errors import StreamError
from mdagent.providers.base import Source, StreamConnection

__all__ = ["MergedConnection", "open_merged"]

_Item = list[str | bytes] | StreamError


class MergedConnection:
    """The StreamConnection protocol over the batches of several connections."""

    def __init__(
        self,
        batches: trio.MemoryReceiveChannel[_Item],
        reconnect_reason: Callable[[str | bytes], str | None],
        parts: Sequence[StreamConnection] = (),
    ) -> None:
        self._batches = batches
        self.reconnect_reason = reconnect_reason
        # The connections merged, in plan order (a provider's subclass may
        # change their subscriptions; their readers are this object's pumps).
        self.parts = tuple(parts)

    async def receive_batch(self) -> list[str | bytes]:
        """The next batch of any connection; StreamError when one of them ended."""
        try:
            item = await self._batches.receive()
        except trio.EndOfChannel:
            raise StreamError("every connection ended") from None
        if isinstance(item, StreamError):
            raise item
        return item

    async def resubscribe(self, old: Source, new: Source) -> bool:
        """Not here: which connection takes which stream is the provider's plan (False)."""
        return False

    async def renew(self, streams: Sequence[tuple[str, str]]) -> bool:
        """Each connection renews those of ``streams`` it carries; True if any did."""
        renewed = False
        for part in self.parts:
            renewed = await part.renew(streams) or renewed
        return renewed


async def _pump(conn: StreamConnection, out: trio.MemorySendChannel[_Item]) -> None:
    async with out:
        try:
            while True:
                await out.send(await conn.receive_batch())
        except StreamError as exc:
            await out.send(exc)
        except trio.BrokenResourceError:
            pass  # the reader left: we are being closed


@asynccontextmanager
async def open_merged(
    openers: Sequence[Callable[[], AbstractAsyncContextManager[StreamConnection]]],
    merged: type[MergedConnection] = MergedConnection,
) -> AsyncIterator[MergedConnection]:
    """Open every connection (in order; any failure closes those opened), then merge them
    (into ``merged``, a provider's subclass that may change subscriptions live)."""
    async with AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(opener()) for opener in openers]
        send, receive = trio.open_memory_channel[_Item](0)
        async with trio.open_nursery() as nursery, receive:
            for conn in conns:
                nursery.start_soon(_pump, conn, send.clone())
            send.close()
            try:
                yield merged(receive, conns[0].reconnect_reason, conns)
            finally:
                nursery.cancel_scope.cancel()
