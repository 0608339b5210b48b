"""Reference A: bare WebSocket receive of the same tape on one connection."""

from __future__ import annotations

import time
from collections.abc import Sequence

import attrs
import trio
import trio_websocket

from mdagent.bench.setup import Venue
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
