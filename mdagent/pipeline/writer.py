"""The writer task: accumulate record batches, commit them with COPY in a thread.

Batches are cut, prepared (rows built, pure Python) and committed in that
order, one transaction each; preparing batch N+1 (a worker thread) overlaps
committing batch N (the commit thread, which takes handed-over batches back
to back, never waiting for the trio loop between two).
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
import queue
import threading
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
# Batches handed to the commit thread at once: one committing, one waiting,
# so the next write starts as soon as one ends.
COMMIT_STAGE_BATCHES = 2


@attrs.frozen
class _ToCommit:
    """A cut batch and its rows, handed from the cutting stage to the commit thread."""

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
        # The commit thread and the readiness ping share the (sync) connection;
        # another thread prepares.
        self._connection_lock = threading.Lock()
        self._prepare_limiter = trio.CapacityLimiter(1)
        # Bounded sample (LATENCIES_KEPT), read by the summary and `mdagent bench`.
        self.latencies_s: array[float] = array("d")
        self.latency_samples = 0  # samples ever appended (the summary takes the newest)
        self.rows_committed = 0
        # Group commit (_cut_batches): batches handed to the commit thread and
        # not yet committed (0: the commit stage is idle); the cut stage's wait
        # for records, and when its batch may go early. The commit stage going
        # idle moves the wait's deadline to ``early``.
        self._in_commit = 0
        self._handed = trio.Semaphore(COMMIT_STAGE_BATCHES)
        self._cut_wait: trio.CancelScope | None = None
        self._cut_early = math.inf
        self.last_commit_at = -math.inf  # trio clock
        # When the database call in flight began (time.monotonic(), set by the
        # commit thread); None when idle. The systemd watchdog stops when one
        # call runs far too long.
        self.write_started_at: float | None = None

    def write_running_s(self) -> float | None:
        """Seconds the database write in progress has run; None when none runs."""
        began = self.write_started_at
        return None if began is None else time.monotonic() - began

    @property
    def _commit_idle(self) -> bool:
        return self._in_commit == 0

    async def run(self, records_in: trio.MemoryReceiveChannel[WriteBatch]) -> None:
        """Until the normalizer closes the channel; then commit what is left.

        Two stages, so that the Python half of a write overlaps the server's
        half: this task cuts batches and prepares their rows in one worker
        thread, while the commit thread (:class:`_CommitThread`) commits the
        batches handed to it, in order and back to back. At most
        ``COMMIT_STAGE_BATCHES`` are handed over (one committing, one
        waiting), plus the one being cut: memory stays bounded.
        """
        committer = _CommitThread(self, trio.lowlevel.current_trio_token())
        committer.start()
        try:
            with committer.failed_scope:
                await self._cut_batches(records_in, committer)
                committer.drain()  # commit what was handed over, then end
                await committer.done.wait()
        finally:
            if not committer.done.is_set():
                committer.stop()  # the batch being written finishes; the rest is abandoned
                with trio.CancelScope(shield=True):
                    await committer.done.wait()
        if committer.failure is not None:
            raise committer.failure
        log.info("writer.drained", rows_committed=self.rows_committed)

    async def _cut_batches(
        self, records_in: trio.MemoryReceiveChannel[WriteBatch], committer: _CommitThread
    ) -> None:
        pending = WriteBatch()
        # deadline: batch_max_delay_s after the first record; early: when the
        # batch may go while the commit stage is idle (IDLE_CUT_AFTER_S).
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
                    await self._hand_on(pending, committer)
                    pending = WriteBatch()
                    deadline = self._cut_early = math.inf
        if len(pending) or pending.offsets:
            await self._hand_on(pending, committer)

    async def _hand_on(self, batch: WriteBatch, committer: _CommitThread) -> None:
        try:
            # A place in the commit stage first, then the rows: at most
            # COMMIT_STAGE_BATCHES prepared batches exist at any time.
            await self._handed.acquire()
            try:
                rows = await trio.to_thread.run_sync(
                    prepare_batch, batch, limiter=self._prepare_limiter
                )
            except BaseException:
                self._handed.release()
                raise
        except trio.Cancelled:
            _log_abandoned(batch)
            raise
        self._in_commit += 1
        committer.hand_over(_ToCommit(batch, rows))

    def _committed(self) -> None:
        """In trio, after the commit thread committed a batch (and observed it): free its place."""
        self._in_commit -= 1
        self._handed.release()
        self.last_commit_at = trio.current_time()
        waiting = self._cut_wait
        if self._commit_idle and waiting is not None:  # a batch in hand may go now
            waiting.deadline = min(waiting.deadline, self._cut_early)

    def _write_with_retry(self, item: _ToCommit, stopping: threading.Event) -> WriteResult | None:
        """In the commit thread: write one batch, retrying until it is committed.

        None when ``stopping`` was set while the database was away (the batch
        is abandoned). Other errors propagate.
        """
        while True:
            self.write_started_at = time.monotonic()
            try:
                with self._connection_lock:
                    result = self.copy_writer.write(item.batch, item.rows)
            except DatabaseUnavailable as exc:
                self.health.database_ok = False
                self.metrics.db_up.set(0)
                self.metrics.write_errors.labels("database_unavailable").inc()
                delay = self.backoff.next_delay()
                log.warning(
                    "writer.database_unavailable",
                    error=str(exc),
                    rows=len(item.batch),
                    retry_in_s=round(delay, 2),
                )
                if stopping.wait(delay):
                    return None
                continue
            finally:
                self.write_started_at = None
            break
        if not self.health.database_ok:
            log.info("writer.database_back")
        self.health.database_ok = True
        self.metrics.db_up.set(1)
        self.backoff.reset()
        return result

    def _observe(self, batch: WriteBatch, result: WriteResult, elapsed: float) -> None:
        """Count a committed batch (in the commit thread: metrics and these counters are
        only written there, and read by trio as whole values)."""
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
            pinged = await trio.to_thread.run_sync(self._ping)
        except DatabaseUnavailable:
            self.health.database_ok = False
            self.metrics.db_up.set(0)
        else:
            if pinged:
                self.health.database_ok = True
                self.metrics.db_up.set(1)

    def _ping(self) -> bool:
        """One round trip; False (no ping) while a write holds the connection.

        That write will tell the truth itself; waiting behind it (perhaps a
        hung one) would hold up shutdown.
        """
        if not self._connection_lock.acquire(blocking=False):
            return False
        try:
            self.copy_writer.ping()
        finally:
            self._connection_lock.release()
        return True


class _CommitThread:
    """The thread that commits prepared batches, in the order handed over, back to back.

    Why a thread of its own rather than one ``trio.to_thread`` call per batch:
    between two such calls the next write waited for the trio loop, which the
    normalizer holds for milliseconds at a time, and the server sat idle
    (issue 14: ~15% of the writer backend's samples were ``idle`` between
    transactions with the next batch already prepared). Results go back to
    trio with ``run_sync_soon``, which never blocks this thread.
    """

    def __init__(self, writer: Writer, token: trio.lowlevel.TrioToken) -> None:
        self._writer = writer
        self._token = token
        self._queue: queue.SimpleQueue[_ToCommit | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._main, name="mdagent-commit", daemon=True)
        self.done = trio.Event()
        self.failure: BaseException | None = None
        # Cancelled when the thread fails: the cut stage stops and run() raises.
        self.failed_scope = trio.CancelScope()

    def start(self) -> None:
        self._thread.start()

    def hand_over(self, item: _ToCommit) -> None:
        self._queue.put(item)

    def drain(self) -> None:
        """No more batches: end once the handed-over ones are committed."""
        self._queue.put(None)

    def stop(self) -> None:
        """End soon: the write in progress finishes, waiting batches are abandoned."""
        self._stopping.set()
        self._queue.put(None)

    def _main(self) -> None:
        writer, token = self._writer, self._token
        try:
            while (item := self._queue.get()) is not None:
                if self._stopping.is_set():
                    _log_abandoned(item.batch)
                    continue
                started = time.perf_counter()
                result = writer._write_with_retry(item, self._stopping)
                if result is None:
                    _log_abandoned(item.batch)
                    continue
                # Observed and let go here, not in trio: freeing a batch's
                # thousands of records took ~9% of the trio thread (issue 14).
                writer._observe(item.batch, result, time.perf_counter() - started)
                del item, result
                token.run_sync_soon(writer._committed)
            while not self._queue.empty():  # stopped: say what is not written
                if (item := self._queue.get()) is not None:
                    _log_abandoned(item.batch)
        except BaseException as exc:  # handed to trio: run() raises it
            token.run_sync_soon(self._failed, exc)
        finally:
            token.run_sync_soon(self.done.set)

    def _failed(self, exc: BaseException) -> None:
        self.failure = exc
        self.failed_scope.cancel()
