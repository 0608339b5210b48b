"""Backfill job workers: claim a job, read its pages, commit each with its checkpoint.

```
BackfillWorkers.run (nursery)
├── worker 1..n      claim (SKIP LOCKED) -> pages -> COPY + checkpoint, one txn per page
│   └── lease        renews the job's lease while the job runs
└── job gauge        mdagent_backfill_jobs{state} from fetch_jobs
```

Every worker has its own database connections (a ``CopyWriter`` for pages,
one for the queue) and shares the venue clients (``histories``), so every
worker of the process spends one rate budget per venue.

Exactly once: a page's rows and the job's new checkpoint commit in one
transaction (``WriteBatch.jobs``), on the writer's conflict-tolerant path
(a row also seen live is skipped, never stored twice, and never fails the
page). A worker that dies leaves its lease to expire; whoever claims the job
next starts at the last committed checkpoint.

Outcomes: complete -> ``done`` (in the last page's transaction); RestUnavailable
-> ``pending`` again after a jittered, growing delay (for as long as the
agent runs: a venue outage longer than the retries must not leave a hole for
good; ``mdagent backfill`` ends such a job ``failed`` after ``max_attempts``);
VenueRejected -> ``failed`` with the venue's code and message (``unrecoverable``
when the venue says the data is not available to us); a channel with no REST
history -> ``unrecoverable``.
"""

from __future__ import annotations

import os
import random
import socket
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import attrs
import psycopg
import structlog
import trio

from mdagent.backfill.history import History, Page
from mdagent.db import jobs as jobs_sql
from mdagent.db.connection import connect
from mdagent.db.copy_writer import CopyWriter
from mdagent.db.jobs import Job, JobProgress
from mdagent.errors import (
    DatabaseUnavailable,
    LeaseLost,
    RestError,
    RestUnavailable,
    VenueRejected,
)
from mdagent.pipeline.backoff import Backoff
from mdagent.pipeline.batches import WriteBatch
from mdagent.pipeline.metrics import Metrics
from mdagent.records import Candle, DeadLetter, Quote, Trade

log = structlog.get_logger("mdagent.backfill")

T = TypeVar("T")


@attrs.frozen
class WorkerSettings:
    """How the pool works. Times in seconds."""

    workers: int = 4
    lease_s: float = 60.0  # a dead worker's job is claimable again after this
    poll_s: float = 1.0  # how often an idle worker looks for new jobs
    # Transient failures before a job is failed; None: retried for as long as
    # the process runs (the agent: gaps heal once the venue is back, however
    # long it was away; the delay stops growing at retry_max_s).
    max_attempts: int | None = None
    retry_initial_s: float = 2.0  # first delay before a transiently failed job is retried...
    retry_max_s: float = 300.0  # ...growing to this
    gauge_every_s: float = 5.0  # mdagent_backfill_jobs refresh


class JobStore:
    """The queue functions of ``db/jobs.py`` over one lazily opened autocommit connection.

    Sync (run it in a worker thread); libpq failures become DatabaseUnavailable.
    """

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: psycopg.Connection | None = None

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = connect(self._dsn, autocommit=True)
            return fn(self._conn, *args)
        except psycopg.OperationalError as exc:
            self.close()
            raise DatabaseUnavailable(f"backfill queue: {exc}") from exc

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


async def close_histories(histories: Iterable[History]) -> None:
    """Close venue clients, shielded: only once every task using them has ended
    (a request in flight on a closed client raises instead of being cancelled)."""
    with trio.CancelScope(shield=True):
        for history in histories:
            await history.aclose()


def owner_name(label: str = "mdagent") -> str:
    """A lease owner unique to this process: ``label@host:pid:random``."""
    return f"{label}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def owner_is_dead(owner: str) -> bool:
    """True when ``owner`` (see :func:`owner_name`) names a process of this host that
    no longer runs. Owners elsewhere, or unreadable ones, are never judged dead."""
    _label, _, rest = owner.partition("@")
    host, _, rest = rest.partition(":")
    pid_text = rest.split(":", 1)[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


class BackfillWorkers:
    """A pool of job workers for the providers in ``histories``.

    ``job_ids``: only these jobs (``mdagent backfill`` runs its own plan);
    None: every job of those providers (the agent). ``close_histories``:
    close the venue clients when the pool ends (False when their owner,
    the agent's REST subtree, shares them with the instruments sync).
    """

    def __init__(
        self,
        dsn: str,
        histories: Mapping[str, History],
        metrics: Metrics,
        settings: WorkerSettings | None = None,
        *,
        owner: str | None = None,
        job_ids: Sequence[int] | None = None,
        rng: random.Random | None = None,
        close_histories: bool = True,
    ) -> None:
        self.dsn = dsn
        self.close_histories = close_histories
        self.histories = dict(histories)
        self.metrics = metrics
        self.settings = settings or WorkerSettings()
        self.owner = owner or owner_name()
        self.job_ids = list(job_ids) if job_ids is not None else None
        self._rng = rng or random.Random()
        self.jobs_finished = 0
        self.rows_written = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Work until cancelled. Venues are asked what they advertise (``History.start``)
        in the background: until then a venue's default budget applies."""
        store = JobStore(self.dsn)
        try:
            # Jobs a killed process of this host left leased: take them back now.
            await trio.to_thread.run_sync(
                store.call, jobs_sql.release_dead_owners, self.job_ids, owner_is_dead
            )
        except DatabaseUnavailable:
            pass  # their leases expire
        finally:
            store.close()
        try:
            async with trio.open_nursery() as nursery:
                for history in self.histories.values():
                    nursery.start_soon(
                        self._start_history, history, name=f"backfill-start-{history.provider}"
                    )
                for n in range(self.settings.workers):
                    nursery.start_soon(self._worker, n, name=f"backfill-worker-{n}")
                nursery.start_soon(self._refresh_gauge, name="backfill-gauge")
                task_status.started()
        finally:
            # Only once every task using them has ended (a request in flight
            # on a closed client raises instead of being cancelled).
            if self.close_histories:
                await close_histories(self.histories.values())

    async def _worker(self, n: int) -> None:
        owner = f"{self.owner}/{n}"
        store = JobStore(self.dsn)
        writer = CopyWriter(self.dsn)
        limiter = trio.CapacityLimiter(1)
        providers = sorted(self.histories)
        try:
            while True:
                try:
                    job = await trio.to_thread.run_sync(
                        store.call,
                        jobs_sql.claim,
                        owner,
                        providers,
                        self.settings.lease_s,
                        self.job_ids,
                        limiter=limiter,
                    )
                except DatabaseUnavailable as exc:
                    log.warning("backfill.database_unavailable", error=str(exc))
                    job = None
                if job is None:
                    await trio.sleep(self.settings.poll_s * (0.5 + self._rng.random()))
                    continue
                await _JobRun(self, job, owner, store, writer, limiter).run()
        finally:
            # Blocking close on cancellation is fine: libpq closes locally.
            writer.close()
            store.close()

    async def _start_history(self, history: History) -> None:
        backoff = Backoff(5.0, 300.0, rng=self._rng)
        while True:
            try:
                await history.start()
                return
            except (RestUnavailable, VenueRejected) as exc:
                delay = backoff.next_delay()
                log.warning(
                    "backfill.venue_info_unavailable",
                    provider=history.provider,
                    error=str(exc),
                    retry_in_s=round(delay, 1),
                )
                await trio.sleep(delay)

    async def _refresh_gauge(self) -> None:
        store = JobStore(self.dsn)
        try:
            while True:
                try:
                    counts = await trio.to_thread.run_sync(store.call, jobs_sql.counts_by_state)
                except DatabaseUnavailable:
                    counts = {}
                for state, count in counts.items():
                    self.metrics.backfill_jobs.labels(state).set(count)
                await trio.sleep(self.settings.gauge_every_s)
        finally:
            store.close()

    def retry_delay(self, attempts: int) -> float:
        """Delay before try ``attempts + 1``: exponential with equal jitter."""
        s = self.settings
        return Backoff(
            s.retry_initial_s, s.retry_max_s, rng=self._rng, attempt=attempts - 1
        ).next_delay()


class _JobRun:
    """One claimed job, from its checkpoint to an outcome."""

    def __init__(
        self,
        pool: BackfillWorkers,
        job: Job,
        owner: str,
        store: JobStore,
        writer: CopyWriter,
        limiter: trio.CapacityLimiter,
    ) -> None:
        self.pool = pool
        self.job = job
        self.owner = owner
        self.store = store
        self.writer = writer
        self.limiter = limiter
        self.lost = False

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(self.store.call, fn, *args, limiter=self.limiter)

    async def run(self) -> None:
        job = self.job
        history = self.pool.histories.get(job.provider)
        with structlog.contextvars.bound_contextvars(
            job=job.id, provider=job.provider, symbol=job.symbol, channel=job.channel
        ):
            if history is None or not history.has_history(job.channel):
                await self._end(
                    "unrecoverable", f"{job.provider} keeps no REST history of {job.channel}"
                )
                return
            ended = False
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._keep_lease, nursery.cancel_scope)
                    try:
                        await self._pages(history)
                    finally:
                        nursery.cancel_scope.cancel()
                ended = True
            finally:
                if not ended:
                    # Cancelled (shutdown, Ctrl-C): hand the job back now rather
                    # than after its lease expires; its checkpoint is committed.
                    with trio.CancelScope(shield=True) as scope:
                        scope.deadline = trio.current_time() + 2.0
                        try:
                            await self._db(jobs_sql.release, job.id, self.owner)
                        except DatabaseUnavailable:
                            pass

    async def _pages(self, history: History) -> None:
        job = self.job
        try:
            page = await history.next_page(job)
            while page.cursor is not None:
                # The next page is read while this one commits: the venue and
                # the database work at the same time. A failed read raises
                # only after this page (and its checkpoint) is stored.
                following = attrs.evolve(job, cursor=page.cursor)
                next_page = await self._commit_while_reading(page, history, following)
                job = self.job = following
                page = next_page
            await self._commit(page)
            self.job = attrs.evolve(job, cursor=None)
            self._finished("done")
            log.info("backfill.job_done", attempts=job.attempts)
        except RestUnavailable as exc:
            await self._retry(str(exc))
        except VenueRejected as exc:
            state = "unrecoverable" if history.is_unrecoverable(exc) else "failed"
            await self._end(state, str(exc))
        except LeaseLost as exc:
            log.warning("backfill.lease_lost", error=str(exc))
        except ValueError as exc:  # a checkpoint this version cannot read
            await self._end("failed", f"bad job: {exc}")

    async def _commit_while_reading(self, page: Page, history: History, following: Job) -> Page:
        read: list[Page] = []
        failed: list[Exception] = []

        async def read_next() -> None:
            try:
                read.append(await history.next_page(following))
            except (RestError, ValueError) as exc:
                failed.append(exc)

        async def commit() -> None:
            try:
                await self._commit(page)
            except LeaseLost as exc:
                failed.insert(0, exc)  # first: nothing after a lost lease counts

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_next)
            nursery.start_soon(commit)
        if failed:
            raise failed[0]
        return read[0]

    async def _commit(self, page: Page) -> None:
        job = self.job
        batch = WriteBatch()
        # One dict lookup per row (the records are of these exact classes).
        into: dict[type, list[Any]] = {
            Trade: batch.trades, Quote: batch.quotes, Candle: batch.candles, DeadLetter: batch.dead
        }  # fmt: skip
        ignored: list[Any] = []  # no other kind comes from a history page
        for record in page.records:
            into.get(type(record), ignored).append(record)
        rows = len(batch.trades) + len(batch.quotes) + len(batch.candles)
        batch.jobs.append(
            JobProgress(
                job.id,
                self.owner,
                page.cursor,
                page.cursor is None,
                rows,
                page.requests,
                self.pool.settings.lease_s,
                page.found,
            )
        )
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                await trio.to_thread.run_sync(self.writer.write, batch, limiter=self.limiter)
                break
            except DatabaseUnavailable as exc:
                # Keep the page and its checkpoint; if the lease expires
                # meanwhile, the write ends in LeaseLost and stores nothing.
                log.warning("backfill.database_unavailable", error=str(exc))
                await trio.sleep(backoff.next_delay())
        self.pool.rows_written += rows
        if rows:
            self.pool.metrics.backfill_rows.labels(job.provider, job.channel).inc(rows)
        for found in page.found:
            log.warning(
                "backfill.ids_not_on_rest",
                state=found.status,
                from_seq=found.from_seq,
                to_seq=found.to_seq,
            )

    async def _keep_lease(self, scope: trio.CancelScope) -> None:
        every = self.pool.settings.lease_s / 3
        while True:
            await trio.sleep(every)
            try:
                ours = await self._db(
                    jobs_sql.renew, self.job.id, self.owner, self.pool.settings.lease_s
                )
            except DatabaseUnavailable:
                continue  # the page write will tell (LeaseLost) if it expired
            if not ours:
                log.warning("backfill.lease_lost")
                self.lost = True
                scope.cancel()
                return

    async def _retry(self, error: str) -> None:
        delay = self.pool.retry_delay(self.job.attempts)
        try:
            state = await self._db(
                jobs_sql.retry_later,
                self.job.id,
                self.owner,
                error,
                delay,
                self.pool.settings.max_attempts,
            )
        except DatabaseUnavailable:
            return  # the lease expires; the job is claimed again
        log.warning("backfill.job_retry", error=error, state=state, retry_in_s=round(delay, 2))
        if state == "failed":
            self._finished("failed")

    async def _end(self, state: str, error: str) -> None:
        try:
            await self._db(jobs_sql.finish, self.job.id, self.owner, state, error)
        except DatabaseUnavailable:
            return
        log.warning("backfill.job_ended", state=state, error=error)
        self._finished(state)

    def _finished(self, state: str) -> None:
        job = self.job
        self.pool.jobs_finished += 1
        self.pool.metrics.backfill_jobs_finished.labels(job.provider, job.channel, state).inc()
