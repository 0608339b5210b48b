"""The writer cuts a batch early while its commit stage is idle (group commit).

A real database behind a CopyWriter whose first write can be held, so the
commit stage is busy exactly when the test says. ``batch_max_delay_s`` is
set far beyond the test's deadline: a batch that waited for it would fail.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
import trio

from mdagent.config import DatabaseConfig
from mdagent.db.copy_writer import CopyWriter, WriteResult
from mdagent.db.prepare import PreparedBatch
from mdagent.pipeline.batches import WriteBatch
from mdagent.pipeline.health import Health
from mdagent.pipeline.metrics import Metrics
from mdagent.pipeline.writer import Writer
from tests.test_copy_writer import trade

NEVER_S = 600.0  # batch_max_delay_s: no batch in these tests may wait for it


class HeldCopyWriter(CopyWriter):
    """Records each committed batch's size; the first write waits for ``release``."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self.sizes: list[int] = []
        self.first_started = threading.Event()
        self.release = threading.Event()

    def write(self, batch: WriteBatch, prepared: PreparedBatch | None = None) -> WriteResult:
        if not self.sizes and not self.first_started.is_set():
            self.first_started.set()
            self.release.wait(30)
        result = super().write(batch, prepared)
        self.sizes.append(len(batch))
        return result


def batch_of(*ids: int) -> WriteBatch:
    out = WriteBatch()
    out.add([trade(i) for i in ids])
    return out


async def wait_for(predicate: Any) -> None:
    with trio.fail_after(20):
        while not predicate():
            await trio.sleep(0.01)


def make_writer(dsn: str) -> tuple[Writer, HeldCopyWriter]:
    copy_writer = HeldCopyWriter(dsn)
    config = DatabaseConfig(dsn=dsn, batch_max_delay_s=NEVER_S, batch_max_rows=100_000)
    return Writer(copy_writer, config, Health(), Metrics()), copy_writer


async def test_idle_commit_stage_takes_a_batch_without_waiting_out_the_delay(
    fresh_db_dsn: str,
) -> None:
    writer, copy_writer = make_writer(fresh_db_dsn)
    copy_writer.release.set()
    send, recv = trio.open_memory_channel[WriteBatch](4)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run, recv)
            await send.send(batch_of(1, 2, 3))
            await wait_for(lambda: writer.rows_committed == 3)
            await send.aclose()
    finally:
        copy_writer.close()
    assert copy_writer.sizes == [3]


async def test_busy_commit_stage_lets_the_next_batch_grow_then_takes_it_when_idle(
    fresh_db_dsn: str,
) -> None:
    writer, copy_writer = make_writer(fresh_db_dsn)
    send, recv = trio.open_memory_channel[WriteBatch](4)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run, recv)
            await send.send(batch_of(1))
            await trio.to_thread.run_sync(copy_writer.first_started.wait, 20)
            # The commit stage is busy: these wait and grow into one batch...
            await send.send(batch_of(2, 3))
            await trio.sleep(0.1)  # longer than IDLE_CUT_AFTER_S: still not cut
            await send.send(batch_of(4, 5, 6))
            await trio.sleep(0.1)
            copy_writer.release.set()
            # ...which goes as soon as the stage is idle, not after NEVER_S.
            await wait_for(lambda: writer.rows_committed == 6)
            await send.aclose()
    finally:
        copy_writer.close()
    assert copy_writer.sizes == [1, 5]


class GatedCopyWriter(CopyWriter):
    """Counts commits; the first write waits for ``release``; ``fail`` makes writes raise."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self.committed = 0
        self.first_started = threading.Event()
        self.release = threading.Event()
        self.fail: BaseException | None = None

    def write(self, batch: WriteBatch, prepared: PreparedBatch | None = None) -> WriteResult:
        if self.fail is not None:
            raise self.fail
        if not self.first_started.is_set():
            self.first_started.set()
            self.release.wait(30)
        result = super().write(batch, prepared)
        self.committed += 1
        return result


async def test_batches_handed_over_commit_back_to_back_while_the_loop_is_busy(
    fresh_db_dsn: str,
) -> None:
    """The next write starts when one ends, not when the trio loop next gets round
    to it: the loop here is blocked (as by a long normalize) when the first
    write ends, and the second batch is committed all the same."""
    copy_writer = GatedCopyWriter(fresh_db_dsn)
    config = DatabaseConfig(dsn=fresh_db_dsn, batch_max_delay_s=NEVER_S, batch_max_rows=2)
    writer = Writer(copy_writer, config, Health(), Metrics())
    send, recv = trio.open_memory_channel[WriteBatch](4)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run, recv)
            await send.send(batch_of(1, 2))
            await trio.to_thread.run_sync(copy_writer.first_started.wait, 20)
            await send.send(batch_of(3, 4))  # full: cut and handed over at once
            await wait_for(lambda: writer._in_commit == 2)
            # Block the loop itself (no checkpoint) while both batches commit.
            copy_writer.release.set()
            deadline = time.monotonic() + 20
            while copy_writer.committed < 2 and time.monotonic() < deadline:
                time.sleep(0.01)  # noqa: ASYNC251 - blocking the loop is the point
            committed_while_blocked = copy_writer.committed
            await wait_for(lambda: writer.rows_committed == 4)
            await send.aclose()
    finally:
        copy_writer.close()
    assert committed_while_blocked == 2
    with psycopg.connect(fresh_db_dsn) as conn:
        row = conn.execute("SELECT count(*) FROM trades").fetchone()
    assert row == (4,)


async def test_an_unexpected_error_in_the_commit_thread_ends_the_writer_with_it(
    fresh_db_dsn: str,
) -> None:
    copy_writer = GatedCopyWriter(fresh_db_dsn)
    copy_writer.fail = RuntimeError("a bug in the write path")
    config = DatabaseConfig(dsn=fresh_db_dsn, batch_max_delay_s=NEVER_S, batch_max_rows=1)
    writer = Writer(copy_writer, config, Health(), Metrics())
    send, recv = trio.open_memory_channel[WriteBatch](4)
    try:
        with trio.fail_after(20), pytest.raises(ExceptionGroup) as raised:
            async with send, trio.open_nursery() as nursery:
                nursery.start_soon(writer.run, recv)
                await send.send(batch_of(1))
                await trio.sleep_forever()  # the writer's failure cancels this
    finally:
        copy_writer.close()
    assert raised.group_contains(RuntimeError, match="a bug in the write path", depth=1)
    assert writer.rows_committed == 0
