"""The stream restart logic, deterministic on trio's autojump clock.

A scripted fake adapter stands in for the provider: each connection attempt
either fails or yields a connection whose frames the test feeds.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import attrs
import pytest
import trio
import trio.testing

from mdagent.config import PipelineConfig, SourceConfig
from mdagent.errors import AuthFailed, StreamError
from mdagent.pipeline.backoff import Backoff
from mdagent.pipeline.batches import FrameBatch
from mdagent.pipeline.health import StreamHealth
from mdagent.pipeline.metrics import Metrics
from mdagent.pipeline.stream import AUTH_FAILED_RETRY_S, StreamTask
from mdagent.providers.base import Source
from mdagent.records import Record


class FakeParser:
    def parse(self, frame: bytes | str, received_ns: int) -> list[Record]:
        return []


@attrs.define
class FakeConnection:
    frames: trio.MemoryReceiveChannel[str]
    closed: bool = False

    async def receive_batch(self) -> list[str | bytes]:
        try:
            return [await self.frames.receive()]
        except trio.EndOfChannel:
            raise StreamError("closed by peer") from None

    def reconnect_reason(self, frame: str | bytes) -> str | None:
        return "serverShutdown" if frame == "shutdown" else None

    async def resubscribe(self, old: Source, new: Source) -> bool:
        return False

    async def renew(self, streams: Sequence[tuple[str, str]]) -> bool:
        return False


@attrs.define
class FakeAdapter:
    """Attempt i uses outcomes[i]: an exception to raise, or None to connect."""

    outcomes: list[BaseException | None]
    name: str = "binance"
    attempts: list[float] = attrs.field(factory=list)
    connections: list[tuple[FakeConnection, trio.MemorySendChannel[str]]] = attrs.field(
        factory=list
    )
    connected: trio.Event = attrs.field(factory=trio.Event)

    def new_parser(self, source: Source) -> FakeParser:
        return FakeParser()

    def connection_urls(self, source: Source) -> list[str]:
        return [source.effective_ws_url()]

    def subscribe_messages(self, source: Source) -> list[str]:
        return []

    @asynccontextmanager
    async def connect(self, source: Source) -> AsyncIterator[FakeConnection]:
        self.attempts.append(trio.current_time())
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome
        send, recv = trio.open_memory_channel[str](100)
        conn = FakeConnection(recv)
        self.connections.append((conn, send))
        self.connected.set()
        try:
            yield conn
        finally:
            conn.closed = True


SOURCE = SourceConfig(
    provider="binance",
    symbols=("BTCUSDT",),
    channels=("trade",),
    reconnect_initial_s=1.0,
    reconnect_max_s=8.0,
    stable_after_s=60.0,
    stale_after_s=30.0,
)


def make_task(
    adapter: FakeAdapter,
    out: trio.MemorySendChannel[FrameBatch],
    source: SourceConfig = SOURCE,
    pipeline: PipelineConfig | None = None,
) -> StreamTask:
    return StreamTask(
        source,
        adapter,
        out,
        pipeline or PipelineConfig(frame_batch_delay_s=0.01, backpressure_timeout_s=5.0),
        StreamHealth(),
        Metrics(),
        backoff=Backoff(source.reconnect_initial_s, source.reconnect_max_s, rng=random.Random(7)),
    )


def test_backoff_is_exponential_with_bounded_jitter_and_resets() -> None:
    backoff = Backoff(1.0, 8.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, step in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert step / 2 <= delay <= step
    backoff.reset()
    assert 0.5 <= backoff.next_delay() <= 1.0


def test_backoff_keeps_its_cap_after_any_number_of_attempts() -> None:
    """2.0 ** attempt overflows past 1023: the writer's Backoff(0.2, 5.0) raised
    OverflowError after about an hour of database outage, a stream's after
    about 6 h of venue outage, killing the agent."""
    backoff = Backoff(0.2, 5.0, rng=random.Random(3))
    delays = [backoff.next_delay() for _ in range(3000)]
    assert all(2.5 <= d <= 5.0 for d in delays[10:])
    far = Backoff(5.0, 300.0, rng=random.Random(3), attempt=10**6)
    assert 150.0 <= far.next_delay() <= 300.0


async def test_a_venue_away_for_thousands_of_attempts_is_still_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adapter = FakeAdapter([StreamError("refused")] * 1100)
    send, _recv = trio.open_memory_channel[FrameBatch](10)
    task = make_task(adapter, send)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(task.run)
        await adapter.connected.wait()
        nursery.cancel_scope.cancel()
    assert len(adapter.attempts) == 1101
    assert task.health.connected


async def test_reconnect_schedule_on_failures(autojump_clock: trio.testing.MockClock) -> None:
    adapter = FakeAdapter([StreamError("refused")] * 4)
    send, _recv = trio.open_memory_channel[FrameBatch](10)
    task = make_task(adapter, send)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(task.run)
        await adapter.connected.wait()
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in zip(adapter.attempts, adapter.attempts[1:], strict=False)]
    expected = Backoff(1.0, 8.0, rng=random.Random(7))
    assert gaps == pytest.approx([expected.next_delay() for _ in range(4)])
    assert [g > 0.4 for g in gaps] == [True] * 4
    assert task.health.connected


async def test_frames_are_batched_with_receive_times(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adapter = FakeAdapter([])
    send, recv = trio.open_memory_channel[FrameBatch](10)
    task = make_task(adapter, send)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(task.run)
        await adapter.connected.wait()
        feed = adapter.connections[0][1]
        for i in range(5):
            await feed.send(f"frame{i}")
        batch = await recv.receive()
        nursery.cancel_scope.cancel()
    assert [f for f, _ in batch.frames] == [f"frame{i}" for i in range(5)]
    assert all(isinstance(t, int) and t > 0 for _, t in batch.frames)
    assert batch.resumed_after_ns is None


async def test_stale_stream_watchdog_reconnects(autojump_clock: trio.testing.MockClock) -> None:
    adapter = FakeAdapter([])
    send, recv = trio.open_memory_channel[FrameBatch](10)
    task = make_task(adapter, send)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(task.run)
        await adapter.connected.wait()
        await adapter.connections[0][1].send("hello")
        await recv.receive()
        t0 = trio.current_time()
        while len(adapter.attempts) < 2:
            await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    # Silent for stale_after_s (30 s), then one backoff step (0.5..1 s).
    assert 30.0 <= adapter.attempts[1] - t0 <= 32.0
    assert adapter.connections[0][0].closed


async def frames_until(recv: trio.MemoryReceiveChannel[FrameBatch], last: str) -> list[FrameBatch]:
    batches: list[FrameBatch] = []
    while not batches or batches[-1].frames[-1][0] != last:
        batches.append(await recv.receive())
    return batches


async def test_server_shutdown_opens_the_replacement_before_the_old_one_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adapter = FakeAdapter([])
    send, recv = trio.open_memory_channel[FrameBatch](10)
    task = make_task(adapter, send)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(task.run)
        await adapter.connected.wait()
        ((old, to_old),) = adapter.connections
        await to_old.send("a")
        await to_old.send("shutdown")
        t_shutdown = trio.current_time()
        while len(adapter.connections) < 2:
            await trio.sleep(0.001)
        assert trio.current_time() - t_shutdown < 0.05
        new, to_new = adapter.connections[1]
        await to_new.send("b")  # held: the old one still delivers
        await to_old.send("c")
        await trio.testing.wait_all_tasks_blocked()
        assert not old.closed
        await to_old.aclose()  # the venue ends the old connection
        batches = await frames_until(recv, "b")
        await trio.testing.wait_all_tasks_blocked()
        assert old.closed and not new.closed
        nursery.cancel_scope.cancel()
    assert [f for b in batches for f, _ in b.frames] == ["a", "shutdown", "c", "b"]
    # No break: nothing for the normalizer to turn into a gap.
    assert all(b.resumed_after_ns is None for b in batches)
    assert len(adapter.connections) == 2


async def test_max_age_rotates_make_before_break(autojump_clock: trio.testing.MockClock) -> None:
    adapter = FakeAdapter([])
    send, recv = trio.open_memory_channel[FrameBatch](10)
    task = make_task(adapter, send, attrs.evolve(SOURCE, max_connection_age_s=2.0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(task.run)
        await adapter.connected.wait()
        opened = trio.current_time()
        ((old, to_old),) = adapter.connections
        await to_old.send("a")
        while len(adapter.connections) < 2:
            await trio.sleep(0.1)
        assert 2.0 <= trio.current_time() - opened <= 2.2
        assert not old.closed
        new, to_new = adapter.connections[1]
        await to_new.send("b")
        batches = await frames_until(recv, "b")
        await trio.testing.wait_all_tasks_blocked()
        assert old.closed and not new.closed
        await to_new.send("c")
        batches += await frames_until(recv, "c")
        nursery.cancel_scope.cancel()
    frames = [f for b in batches for f, _ in b.frames]
    assert frames[0] == "a" and frames[-2:] == ["b", "c"]
    assert all(b.resumed_after_ns is None for b in batches)
    assert len(adapter.connections) == 2
    assert task.metrics.stream_rotations.labels(SOURCE.key, "seamless")._value.get() == 1


async def test_auth_failure_is_retried_slowly(autojump_clock: trio.testing.MockClock) -> None:
    adapter = FakeAdapter([AuthFailed("auth_failed: bad key"), AuthFailed("auth_failed: bad key")])
    send, _recv = trio.open_memory_channel[FrameBatch](10)
    task = make_task(adapter, send)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(task.run)
        await trio.sleep(1)
        assert task.health.auth_failed and not task.health.connected
        await adapter.connected.wait()
        nursery.cancel_scope.cancel()
    assert adapter.attempts[1] - adapter.attempts[0] == pytest.approx(AUTH_FAILED_RETRY_S)
    assert adapter.attempts[2] - adapter.attempts[1] == pytest.approx(AUTH_FAILED_RETRY_S)


async def test_backpressure_stops_reading_then_resumes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adapter = FakeAdapter([])
    send, recv = trio.open_memory_channel[FrameBatch](1)
    task = make_task(adapter, send)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(task.run)
        await adapter.connected.wait()
        feed = adapter.connections[0][1]
        await feed.send("one")
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(0.05)  # first batch fills the channel (nobody reads)
        await feed.send("two")
        t0 = trio.current_time()
        while not adapter.connections[0][0].closed:
            await trio.sleep(0.1)
        stopped_after = trio.current_time() - t0
        # The held batch is delivered once there is room, then it reconnects.
        got = [f for b in [await recv.receive(), await recv.receive()] for f, _ in b.frames]
        while len(adapter.connections) < 2:
            await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert 5.0 <= stopped_after <= 5.5
    assert got == ["one", "two"]
    assert task.metrics.backpressure_stops.labels(SOURCE.key)._value.get() == 1


async def test_max_connection_age(autojump_clock: trio.testing.MockClock) -> None:
    source = attrs.evolve(SOURCE, max_connection_age_s=100.0, stale_after_s=0.0)
    adapter = FakeAdapter([])
    send, _recv = trio.open_memory_channel[FrameBatch](10)
    task = make_task(adapter, send, source)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(task.run)
        while len(adapter.attempts) < 2:
            await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert 100.0 <= adapter.attempts[1] - adapter.attempts[0] <= 100.1


async def test_graceful_stop_hands_on_frames_in_hand(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adapter = FakeAdapter([])
    send, recv = trio.open_memory_channel[FrameBatch](10)
    # A long batch window: the frames are still "in hand" when stop() comes.
    task = make_task(adapter, send, pipeline=PipelineConfig(frame_batch_delay_s=10.0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(task.run)
        await adapter.connected.wait()
        for frame in ("a", "b", "c"):
            await adapter.connections[0][1].send(frame)
        await trio.testing.wait_all_tasks_blocked()
        t0 = trio.current_time()
        task.stop()
    assert trio.current_time() - t0 < 0.01  # run() returned at once
    batch = recv.receive_nowait()
    assert [f for f, _ in batch.frames] == ["a", "b", "c"]
    assert adapter.connections[0][0].closed
    assert len(adapter.attempts) == 1  # no reconnect after a stop


async def test_stop_while_waiting_to_reconnect(autojump_clock: trio.testing.MockClock) -> None:
    adapter = FakeAdapter([StreamError("refused")] * 3)
    send, _recv = trio.open_memory_channel[FrameBatch](10)
    task = make_task(adapter, send)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(task.run)
        await trio.sleep(0.1)
        task.stop()
    assert len(adapter.attempts) == 1


async def test_batches_are_bounded_in_bytes(autojump_clock: trio.testing.MockClock) -> None:
    adapter = FakeAdapter([])
    send, recv = trio.open_memory_channel[FrameBatch](10)
    task = make_task(
        adapter, send, pipeline=PipelineConfig(frame_batch_max_bytes=10, frame_batch_delay_s=1.0)
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(task.run)
        await adapter.connected.wait()
        for i in range(6):
            await adapter.connections[0][1].send(f"frame{i}")  # 6 bytes each
        batches = [await recv.receive() for _ in range(3)]
        nursery.cancel_scope.cancel()
    assert [len(b.frames) for b in batches] == [2, 2, 2]
