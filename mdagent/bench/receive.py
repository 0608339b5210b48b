"""Reference A: bare WebSocket receive of the same tape on one connection.

Three clients read the same venue's tape, each on one connection, doing
nothing but receive: trio-websocket (A, kept for continuity with earlier
figures; its frames feed reference B), mdagent's own client (A2) and the
``websockets`` library on asyncio (A3, the fastest plain-Python receive; the
agent's committed rate is held against it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs
import trio
import trio_websocket

from mdagent.bench.setup import Venue

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection
from mdagent.providers.wsclient import connect_websocket
from mdagent.testing.kit import BenchError, Captured, kit_for

# Reference B copies at most this many captured rows.
REFERENCE_MAX_ROWS = 300_000


@attrs.define
class ReceiveReference:
    frames: int
    events: int
    seconds: float
    captured: list[Captured]  # (frame, receive time ns) for reference B

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds


async def run_receive_reference(
    provider: str, venue: Venue, symbols: Sequence[str], duration_s: float
) -> ReceiveReference:
    """One connection, nothing but ``get_message()`` in a loop."""
    profile = kit_for(provider).bench
    url = profile.receive_url(venue.ws_url, symbols)
    captured: list[Captured] = []
    capture_events = 0
    frames = events = 0
    count_events, events_in = profile.counts_events, profile.events_in
    async with trio_websocket.open_websocket_url(
        url, message_queue_size=1024, max_message_size=16 << 20
    ) as ws:
        await profile.bare_handshake(ws, venue.api_keys[0], symbols)
        with trio.move_on_after(min(1.0, duration_s / 2)):  # warm-up
            while True:
                await ws.get_message()
        started = time.perf_counter()
        with trio.move_on_after(duration_s):
            while True:
                frame = await ws.get_message()
                frames += 1
                n = events_in(frame) if count_events else 1
                events += n
                if capture_events < REFERENCE_MAX_ROWS:
                    captured.append((str(frame), time.time_ns()))
                    capture_events += n
        seconds = time.perf_counter() - started
    if not frames:
        raise BenchError("reference A received no frames")
    return ReceiveReference(frames, events, seconds, captured)


async def run_lean_receive_reference(
    provider: str, venue: Venue, symbols: Sequence[str], duration_s: float
) -> ReceiveReference:
    """One connection with mdagent's own client (providers/wsclient.py): reads only.

    The agent's streams use this client, so this is the receive cost the agent
    itself pays, without parsing, channels or the database.
    """
    profile = kit_for(provider).bench
    url = profile.receive_url(venue.ws_url, symbols)
    frames = events = 0
    count_events, events_in = profile.counts_events, profile.events_in
    ws = await connect_websocket(url, max_message_bytes=16 << 20)
    try:
        await profile.lean_handshake(ws, venue.api_keys[0], symbols)
        with trio.move_on_after(min(1.0, duration_s / 2)):  # warm-up
            while True:
                await ws.receive_batch()
        started = time.perf_counter()
        with trio.move_on_after(duration_s):
            while True:
                batch = await ws.receive_batch()
                frames += len(batch)
                if count_events:
                    events += sum(map(events_in, batch))
                else:
                    events += len(batch)
        seconds = time.perf_counter() - started
    finally:
        await ws.aclose()
    if not frames:
        raise BenchError("lean receive reference received no frames")
    return ReceiveReference(frames, events, seconds, [])


class _WebsocketsSocket:
    """A ``websockets`` connection seen through the handshake's MessageSocket protocol."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws

    async def get_message(self) -> str | bytes:
        return await self._ws.recv()

    async def send_message(self, message: str) -> None:
        await self._ws.send(message)


async def _websockets_receive(
    provider: str, venue: Venue, symbols: Sequence[str], duration_s: float
) -> ReceiveReference:
    profile = kit_for(provider).bench
    url = profile.receive_url(venue.ws_url, symbols)
    frames = events = 0
    count_events, events_in = profile.counts_events, profile.events_in
    # Imported here: the agent phases' peak RSS (read before the references
    # run) should not carry a library only this reference uses.
    from websockets.asyncio.client import connect

    loop = asyncio.get_running_loop()
    async with connect(url, max_size=16 << 20, compression=None, max_queue=1024) as ws:
        await profile.bare_handshake(_WebsocketsSocket(ws), venue.api_keys[0], symbols)
        warm_until = loop.time() + min(1.0, duration_s / 2)
        while loop.time() < warm_until:
            await ws.recv()
        started = time.perf_counter()
        stop_at = loop.time() + duration_s
        # Checking the clock per frame (not a timeout per recv) keeps the
        # loop as bare as the library allows.
        while loop.time() < stop_at:
            frame = await ws.recv()
            frames += 1
            events += events_in(frame) if count_events else 1
        seconds = time.perf_counter() - started
    if not frames:
        raise BenchError("the websockets receive reference received no frames")
    return ReceiveReference(frames, events, seconds, [])


def run_websockets_reference(
    provider: str, venue: Venue, symbols: Sequence[str], duration_s: float
) -> ReceiveReference:
    """Reference A3: the ``websockets`` library's asyncio client, ``recv()`` in a loop
    on one connection (no compression, as the agent's client negotiates none).

    Runs its own asyncio event loop (call it outside trio). Raises BenchError
    when nothing arrived, OSError / websockets' errors when it cannot connect.
    """
    return asyncio.run(_websockets_receive(provider, venue, symbols, duration_s))
