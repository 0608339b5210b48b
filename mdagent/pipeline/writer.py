"""The writer task: accumulate record batches, commit them with COPY in a thread.

Batches are cut, prepared (rows built, pure Python) and committed in that
order, one transaction each; preparing batch N+1 overlaps committing batch N.
A batch is cut at ``batch_max_rows``, after ``batch_max_delay_s``, or, while
the commit stage is idle, once its first record has waited
``IDLE_CUT_AFTER_S`` (group commit: batches are as large as the load makes
them, never held back for a delay the database does not need).

Policy when the database is away: keep the batch in hand (and the one prepared
after it: bounded), retry with backoff, report not-ready. Meanwhile the records
channel fills, the normalizer blocks, the frames channel fills and the streams
hit their backpressure limit: memory stays bounded end to end.
"""

from __future__ import annotations

import math
import time
from array import array

import attrs
import structlog
import trio

from mdagent.config import DatabaseConfig
from mdagent.db.copy_writer import CopyWriter, WriteResult
from mdagent.db.prepare import PreparedBatch, prepare_batch
from mdagent.errors import DatabaseUnavailable
from mdagent.pipeline.backoff import Backoff
from mdagent.pipeline.batches import WriteBatch
from mdagent.pipeline.health import Health
from mdagent.pipeline.metrics import Metrics

log = structlog.get_logger("mdagent.writer")

# Sample one record in this many for the commit latency histogram.
_LATENCY_SAMPLE_EVERY = 16
# Latency samples kept for the summary line and the bench: past the limit the
# older half goes. 8 bytes each in an array (800 KB at most); a list of floats
# took 32 (3.2 MB, which a Polygon-rate agent reached only after ~15 minutes).
LATENCIES_KEPT = 100_000
# Group commit: while the commit stage is idle, a batch is cut once its first
# record has waited this long, rather than after the whole batch_max_delay_s.
# Under load the commit stage is busy and batches grow towards batch_max_rows
# as before; below it, records stop waiting for a delay meant to fill
# batches (issue 14: at 40,000 events/s the writer waited ~125 ms to fill
# 5,000-row batches while its commit stage was idle two thirds of the time).
# The floor bounds the batch rate at about 1 / IDLE_CUT_AFTER_S.
IDLE_CUT_AFTER_S = 0.02


@attrs.frozen
class _ToCommit:
    """A cut batch and its rows, handed from the cutting stage to the commit loop."""

    batch: WriteBatch
    rows: PreparedBatch


def _log_abandoned(batch: WriteBatch) -> None:
    """Shutdown ran out of time with the database away. The offsets were not
    advanced, so the next start records these ranges as gaps; say here
    exactly what was not written."""
    log.error(
        "writer.batch_abandoned",
        rows=len(batch),
        ranges={f"{p}:{s}:{c}": [seq, ts] for (p, s, c), (seq, ts) in batch.offsets.items()},
    )


class Writer:
    def __init__(
        self, copy_writer: CopyWriter, config: DatabaseConfig, health: Health, metrics: Metrics
    ) -> None:
        self.copy_writer = copy_writer
        self.config = config
        self.health = health
        self.metrics = metrics
        self.backoff = Backoff(0.2, 5.0)
        # One thread at a time owns the (sync) connection; another prepares.
        self._limiter = trio.CapacityLimiter(1)
        self._prepare_limiter = trio.CapacityLimiter(1)
        # Bounded sample (LATENCIES_KEPT), read by the summary and `mdagent bench`.
        self.latencies_s: array[float] = array("d")
        self.latency_samples = 0  # samples ever appended (the summary takes the newest)
        self.rows_committed = 0
        # Group commit (_cut_batches): False while _commit_loop commits a batch;
        # the cut stage's wait for records, and when its batch may go early.
        self._commit_idle = True
        self._cut_wait: trio.CancelScope | None = None
        self._cut_early = math.inf
        self.last_commit_at = -math.inf  # trio clock
        # When the database call in flight began (trio clock); None when idle.
        # The systemd watchdog stops when one call runs far too long.
        self.write_started_at: float | None = None

    async def run(self, records_in: trio.MemoryReceiveChannel[WriteBatch]) -> None:
        """Until the normalizer closes the channel; then commit what is left.

        Two stages, so that the Python half of a write overlaps the server's
        half: this task cuts batches and prepares their rows in one worker
        thread, while ``_commit_loop`` commits the previous batch in another.
        The unbuffered channel between them keeps at most three batches in
        hand (accumulating, prepared, committing): memory stays bounded.
        """
        prepared_send, prepared_recv = trio.open_memory_channel[_ToCommit](0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._commit_loop, prepared_recv)
            async with prepared_send:
                await self._cut_batches(records_in, prepared_send)
        log.info("writer.drained", rows_committed=self.rows_committed)

    async def _cut_batches(
        self,
        records_in: trio.MemoryReceiveChannel[WriteBatch],
        prepared_out: trio.MemorySendChannel[_ToCommit],
    ) -> None:
        pending = WriteBatch()
        # deadline: batch_max_delay_s after the first record; early: when the
        # batch may go while the commit stage is idle (IDLE_CUT_AFTER_S).
        # The commit stage going idle moves the wait's deadline to ``early``.
        deadline = self._cut_early = math.inf
        max_delay = self.config.batch_max_delay_s
        async with records_in:
            while True:
                wake = self._cut_early if self._commit_idle else deadline
                with trio.move_on_at(wake) as self._cut_wait:
                    try:
                        incoming = await records_in.receive()
                    except trio.EndOfChannel:
                        break
                    if not len(pending) and not pending.offsets:
                        now = trio.current_time()
                        deadline = now + max_delay
                        self._cut_early = now + min(IDLE_CUT_AFTER_S, max_delay)
                    pending.merge(incoming)
                self._cut_wait = None
                now = trio.current_time()
                if (
                    len(pending) >= self.config.batch_max_rows
                    or now >= deadline
                    or (self._commit_idle and now >= self._cut_early)
                ):
                    await self._hand_on(pending, prepared_out)
                    pending = WriteBatch()
                    deadline = self._cut_early = math.inf
        if len(pending) or pending.offsets:
            await self._hand_on(pending, prepared_out)

    async def _hand_on(
        self, batch: WriteBatch, prepared_out: trio.MemorySendChannel[_ToCommit]
    ) -> None:
        try:
            rows = await trio.to_thread.run_sync(
                prepare_batch, batch, limiter=self._prepare_limiter
            )
            await prepared_out.send(_ToCommit(batch, rows))
        except trio.Cancelled:
            _log_abandoned(batch)
            raise

    async def _commit_loop(self, prepared_in: trio.MemoryReceiveChannel[_ToCommit]) -> None:
        async with prepared_in:
            async for item in prepared_in:
                self._commit_idle = False
                try:
                    await self.commit(item.batch, item.rows)
                finally:
                    self._commit_idle = True
                    waiting = self._cut_wait
                    if waiting is not None:  # a batch in hand may go now
                        waiting.deadline = min(waiting.deadline, self._cut_early)

    async def commit(self, batch: WriteBatch, prepared: PreparedBatch) -> None:
        """Write one batch, retrying until it is committed (or we are cancelled)."""
        try:
            await self._commit_with_retry(batch, prepared)
        except trio.Cancelled:
            _log_abandoned(batch)
            raise

    async def _commit_with_retry(self, batch: WriteBatch, prepared: PreparedBatch) -> None:
        while True:
            started = time.perf_counter()
            self.write_started_at = trio.current_time()
            try:
                result = await trio.to_thread.run_sync(
                    self.copy_writer.write, batch, prepared, limiter=self._limiter
                )
            except DatabaseUnavailable as exc:
                self.health.database_ok = False
                self.metrics.db_up.set(0)
                self.metrics.write_errors.labels("database_unavailable").inc()
                delay = self.backoff.next_delay()
                log.warning(
                    "writer.database_unavailable",
                    error=str(exc),
                    rows=len(batch),
                    retry_in_s=round(delay, 2),
                )
                await trio.sleep(delay)
                continue
            finally:
                self.write_started_at = None
            break
        elapsed = time.perf_counter() - started
        if not self.health.database_ok:
            log.info("writer.database_back")
        self.health.database_ok = True
        self.metrics.db_up.set(1)
        self.backoff.reset()
        self.last_commit_at = trio.current_time()
        self._observe(batch, result, elapsed)

    def _observe(self, batch: WriteBatch, result: WriteResult, elapsed: float) -> None:
        rows = len(batch)
        self.rows_committed += rows
        m = self.metrics
        m.batch_seconds.observe(elapsed)
        m.batches_committed.labels("slow" if result.slow_path else "fast").inc()
        for table, records in (
            ("trades", batch.trades),
            ("quotes", batch.quotes),
            ("candles", batch.candles),
            ("trades_raw", batch.raw),
            ("dead_letter", batch.dead),
            ("fetch_jobs", batch.gaps),
        ):
            if records:
                m.rows_committed.labels(table).inc(len(records))
        now_ns = time.time_ns()
        sample = [now_ns - t.ts_ns for t in batch.trades[::_LATENCY_SAMPLE_EVERY]]
        for lat_ns in sample:
            m.commit_latency.observe(lat_ns / 1e9)
        self.latencies_s.extend(ns / 1e9 for ns in sample)
        self.latency_samples += len(sample)
        if len(self.latencies_s) > LATENCIES_KEPT:
            del self.latencies_s[: LATENCIES_KEPT // 2]
        log.debug("writer.committed", rows=rows, seconds=round(elapsed, 4))

    async def check_database(self) -> None:
        """Readiness probe for when nothing is being written."""
        try:
            await trio.to_thread.run_sync(self.copy_writer.ping, limiter=self._limiter)
        except DatabaseUnavailable:
            self.health.database_ok = False
            self.metrics.db_up.set(0)
        else:
            self.health.database_ok = True
            self.metrics.db_up.set(1)
