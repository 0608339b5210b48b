"""``mdagent backfill``: plan a range as jobs, run them within the rate budget, report.

Resumable: the plan's jobs are rows in ``fetch_jobs`` keyed by their range,
so running the same command again finds them and continues each from its
committed checkpoint (failed ones get a fresh set of attempts; done ones are
not read again). Exit 0 when every job is done, 1 when some are not (listed),
2 for bad arguments (one line, from :class:`~mdagent.backfill.plan.PlanError`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
import time
from collections.abc import AsyncIterator
from typing import TextIO

import attrs
import structlog
import trio

from mdagent import interrupts
from mdagent.backfill.history import History
from mdagent.backfill.plan import Plan, PlanError, make_plan
from mdagent.backfill.progress import TERMINAL, display_for
from mdagent.backfill.setup import histories_for
from mdagent.backfill.worker import (
    BackfillWorkers,
    JobStore,
    WorkerSettings,
    close_histories,
    owner_name,
)
from mdagent.config import Config, SourceConfig
from mdagent.db import jobs as jobs_sql
from mdagent.db.embedded import database_dsn
from mdagent.db.jobs import JobRow
from mdagent.db.migrate import migrate
from mdagent.errors import DatabaseUnavailable, RestError, RestUnavailable
from mdagent.pipeline.agent import tune_interpreter
from mdagent.pipeline.metrics import Metrics, RestMetrics
from mdagent.providers.registry import PROVIDERS

EXIT_OK = 0
EXIT_FAILED = 1

log = structlog.get_logger("mdagent.backfill")

POLL_S = 0.5
# Each worker holds two database connections (queue and COPY): 16 leave room
# for the agent and another run within PostgreSQL's default max_connections
# (100); more would not go faster, the venue's rate budget paces them.
MAX_WORKERS = 16
# The database unreachable this long: stop (exit 1) instead of waiting for ever.
DATABASE_GONE_S = 60.0


@attrs.frozen
class BackfillArgs:
    provider: str
    symbol: str
    kind: str
    from_text: str
    to_text: str
    dry_run: bool = False
    workers: int = 4
    chunk_hours: float | None = None


def build_plan(args: BackfillArgs) -> Plan:
    """Raises PlanError (bad arguments: exit 2)."""
    chunk_s = None if args.chunk_hours is None else args.chunk_hours * 3600
    return make_plan(
        args.provider,
        args.symbol,
        args.kind,
        args.from_text,
        args.to_text,
        chunk_s=chunk_s,
        now_ns=time.time_ns(),
    )


def source_for(config: Config, plan: Plan) -> SourceConfig:
    """The config's source of the plan's provider (its ``rest_url`` and key), else defaults.

    Raises PlanError when the provider needs an API key and no source names one.
    """
    for source in config.sources:
        if source.provider == plan.provider:
            return attrs.evolve(source, backfill=True)
    if PROVIDERS[plan.provider].api_key_required:
        raise PlanError(
            f'no [[sources]] with provider = "{plan.provider}" in the config: its'
            " api_key_env (and rest_url) say how to reach the venue"
        )
    return SourceConfig(provider=plan.provider, symbols=(plan.symbol,), channels=())


def run_backfill(config: Config, args: BackfillArgs, out: TextIO = sys.stdout) -> int:
    plan = build_plan(args)
    source = source_for(config, plan)
    if plan.cut_at_now:
        print(
            f"mdagent: --to {args.to_text} is in the future: backfilling up to now"
            f" ({_ts(plan.to_ns + 1)}); run again later for the rest",
            file=sys.stderr,
        )
    if args.dry_run:
        with interrupts.deferred():  # a few requests: finish them
            return trio.run(_dry_run, plan, source, out)
    db = config.database
    with database_dsn(db.dsn, db.data_dir, db.embedded) as dsn:
        migrate(dsn)
        # The loop polls for a stop signal (Ctrl-C, SIGTERM) and stops the
        # workers itself: each job keeps its last committed checkpoint.
        with interrupts.deferred():
            rows = trio.run(_run, dsn, plan, source, args.workers)
    stopped = interrupts.stop_requested()
    failed = [j for j in rows if j.status != "done"]
    total = sum(j.rows_written for j in rows)
    print(
        f"backfill {plan.provider} {plan.symbol} {plan.kind}: {len(rows) - len(failed)}/{len(rows)} jobs done, {total} rows",
        file=out,
    )
    if rows and not failed:
        return EXIT_OK
    if stopped is not None:  # also before any job was stored (no rows)
        print(f"interrupted by {stopped.name}: run the same command again to continue", file=out)
        return EXIT_FAILED
    for job in failed:
        print(
            f"  job {job.id} {_range(job)}: {job.status} after {job.attempts} attempt(s): {job.error or '-'}",
            file=out,
        )
    print("run the same command again to continue from the checkpoints", file=out)
    return EXIT_FAILED


async def _raise_unless_listed(history: History, plan: Plan) -> None:
    """PlanError (exit 2) when the venue does not know ``plan.symbol``, active or not."""
    try:
        listed = await history.lookup(plan.symbol)
    except ValueError as exc:  # an answer that is not a listing: the venue's fault
        raise RestUnavailable(f"{plan.provider} instrument lookup: {exc}") from None
    if not listed:
        raise PlanError(f"{plan.provider} does not list {plan.symbol!r} (active or delisted)")


@contextlib.asynccontextmanager
async def _stopped_by_signal() -> AsyncIterator[trio.CancelScope]:
    """A scope cancelled once a stop signal (Ctrl-C, SIGTERM) is recorded.

    The signals are only recorded while trio runs (interrupts.deferred), and
    the job loop polls for them; the requests before it (the venue's limits,
    the symbol lookup) could wait on a 429's Retry-After, up to 3 days
    (rest.py), and a Ctrl-C then did nothing. ``cancelled_caught`` tells.
    """
    try:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                # Polled, as the job loop does: the signal handler runs outside trio.
                while True:
                    if interrupts.stop_requested() is not None:
                        nursery.cancel_scope.cancel()
                        return
                    await trio.sleep(POLL_S)

            nursery.start_soon(watch)
            yield nursery.cancel_scope
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The watcher raises nothing: the one error is the body's (a
        # PlanError is exit 2, a RestError an unreachable venue), as if the
        # body had run without the watcher.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


async def _dry_run(plan: Plan, source: SourceConfig, out: TextIO) -> int:
    histories = histories_for([source])
    history = histories[plan.provider]
    estimate = None
    try:
        async with _stopped_by_signal() as stop:
            try:
                await _raise_unless_listed(history, plan)
                await history.start()
                estimate = await history.estimate(plan)
            except RestError as exc:
                print(f"(venue not reachable for an estimate: {exc})", file=out)
    finally:
        await history.aclose()
    stopped = interrupts.stop_requested()
    if stop.cancelled_caught and stopped is not None:
        print(f"interrupted by {stopped.name} before the venue answered", file=out)
        return EXIT_FAILED
    print(
        f"plan: {plan.provider} {plan.symbol} {plan.kind} (channel {plan.channel})"
        f" {_ts(plan.from_ns)} .. {_ts(plan.to_ns)}, {len(plan.jobs)} job(s)",
        file=out,
    )
    for job in plan.jobs:
        print(f"  {_ts(job.from_ts_ns)} .. {_ts(job.to_ts_ns)}", file=out)
    if estimate is not None:
        requests = "unknown" if estimate.requests is None else str(estimate.requests)
        weight = "n/a" if estimate.weight is None else str(estimate.weight)
        seconds = "unknown" if estimate.seconds is None else f"at least {estimate.seconds:.0f} s"
        print(
            f"estimate: {requests} requests, weight {weight}, time {seconds} ({estimate.note})",
            file=out,
        )
    return EXIT_OK


async def _run(
    dsn: str,
    plan: Plan,
    source: SourceConfig,
    workers: int,
) -> list[JobRow]:
    # As the agent does: the workers' writer threads hand the GIL back sooner
    # to the loop reading pages (about a fifth more rows/s in the bench).
    tune_interpreter()
    metrics = Metrics()
    histories: dict[str, History] = histories_for([source], RestMetrics(metrics))
    history = histories[plan.provider]
    ids: list[int] | None = None
    try:
        async with _stopped_by_signal():
            await history.start()
            # Before any job is stored, through the budget the workers will use:
            # a job for a symbol the venue does not know would end "done" with
            # nothing (Polygon answers an empty page).
            await _raise_unless_listed(history, plan)
            ids = await trio.to_thread.run_sync(_store_plan, dsn, plan)
    except BaseException:
        await close_histories(histories.values())
        raise
    if ids is None:  # stopped before the jobs were stored: nothing to report
        await close_histories(histories.values())
        return []
    # A worker without a job of this plan would only hold connections.
    # The command reports what it could not do (exit 1) instead of waiting
    # for ever on a venue that is away: a job fails after 8 transient failures.
    settings = WorkerSettings(workers=max(1, min(workers, len(ids))), max_attempts=8)
    display = display_for(sys.stderr)
    pool = BackfillWorkers(
        dsn, histories, metrics, settings, owner=owner_name("mdagent-backfill"), job_ids=ids
    )
    store = JobStore(dsn)
    rows: list[JobRow] = []
    lost: DatabaseUnavailable | None = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            gone_since: float | None = None
            while True:
                try:
                    rows = await trio.to_thread.run_sync(store.call, jobs_sql.jobs_by_id, ids)
                    gone_since = None
                except DatabaseUnavailable as exc:
                    # The workers keep their pages and retry; wait as long as
                    # a server restart takes, not for ever.
                    now = trio.current_time()
                    if gone_since is None:
                        gone_since = now
                        log.warning("backfill.database_unavailable", error=str(exc))
                    elif now - gone_since > DATABASE_GONE_S:
                        lost = exc
                        break
                else:
                    display.update(rows)
                    if all(j.status in TERMINAL for j in rows) or interrupts.stop_requested():
                        break
                await trio.sleep(POLL_S)
            nursery.cancel_scope.cancel()
    finally:
        display.close()
        store.close()
    if lost is not None:
        raise DatabaseUnavailable(
            f"{lost} (for {DATABASE_GONE_S:.0f} s); run the same command again to continue"
        )
    return rows


def _store_plan(dsn: str, plan: Plan) -> list[int]:
    """The plan's jobs in fetch_jobs (those already there are kept): their ids."""
    store = JobStore(dsn)
    try:
        return store.call(jobs_sql.plan, list(plan.jobs))
    finally:
        store.close()


def _ts(ns: int | None) -> str:
    if ns is None:
        return "-"
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat(timespec="milliseconds")


def _range(job: JobRow) -> str:
    return f"{job.symbol} {job.channel} {_ts(job.from_ts_ns)} .. {_ts(job.to_ts_ns)}"
