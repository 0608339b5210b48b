"""run_agent: the root of the nursery tree.

```
Agent.run (root nursery: config, signals, shutdown order)
├── http: /metrics /healthz /readyz
├── signals: SIGTERM/SIGINT -> drain; SIGHUP -> reload
├── maintenance (partitions, retention), database probe
├── watchdog (WATCHDOG=1 unless a database write hangs), summary line
├── rest: the venue REST clients (one rate budget per venue), closed last
│   ├── backfill: job workers fill fetch_jobs gaps over REST (backfill/worker.py)
│   └── instruments: listings -> instruments, symbols checked (pipeline/instruments.py)
└── pipeline nursery
    ├── streams (StreamSupervisor: one StreamTask per source)
    │     │ FrameBatch (bounded channel)
    ├── normalizer -> WriteBatch (bounded channel)
    └── writer: cuts batches, prepares rows in one worker thread
          └── commit loop: COPY + COMMIT in another, strictly in order

With [agent] workers = N > 1, in the parent instead of the pipeline nursery:
└── shards nursery (shards/supervisor.py)
    ├── shard:0 .. shard:N-1: one worker process each (shards/process.py),
    │     its main (shards/child.py): an Agent with a shard,
    │     running http on loopback + the pipeline nursery above for its streams
```
Shutdown order: cancel the streams; the supervisor closes the frames channel,
the normalizer drains it and closes the records channel, the writer commits
what is left. The pipeline nursery gets ``shutdown_grace_s`` for that.

With ``[agent] workers = N > 1`` the same class plays two roles
(``mdagent/shards/``): the parent keeps everything above but the pipeline
nursery, which becomes the shards nursery (one supervised worker process per
shard); each worker is an Agent with a ``shard``, running only the pipeline
nursery (its shard of the sources), HTTP on loopback for the parent, the
database probe and the summary line; migrations, maintenance and the REST
work stay the parent's.
"""

from __future__ import annotations

import gc
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import structlog
import trio

from mdagent import interrupts
from mdagent.config import Config, load_config
from mdagent.db.copy_writer import CopyWriter
from mdagent.db.embedded import EmbeddedServer, embedded_or_dsn
from mdagent.db.migrate import migrate
from mdagent.errors import ConfigError, DatabaseUnavailable
from mdagent.listen import open_listeners
from mdagent.logs import configure_logging
from mdagent.pipeline.backoff import Backoff
from mdagent.pipeline.batches import FrameBatch, WriteBatch
from mdagent.pipeline.embedded_watch import keep_embedded_server
from mdagent.pipeline.health import Health
from mdagent.pipeline.http import HealthServer
from mdagent.pipeline.maintenance import run_maintenance
from mdagent.pipeline.metrics import Metrics, RestMetrics
from mdagent.pipeline.normalizer import Normalizer, run_normalizer
from mdagent.pipeline.sdnotify import sd_notify, watchdog_interval_s
from mdagent.pipeline.streams import StreamCollector
from mdagent.pipeline.summary import Summary, run_summary
from mdagent.pipeline.supervisor import StreamSupervisor
from mdagent.pipeline.watchdog import run_watchdog, write_stuck_check
from mdagent.pipeline.writer import Writer
from mdagent.rlimits import raise_file_limit
from mdagent.shards.assign import Shard, shard_sources
from mdagent.shards.budget import dedup_keys, worker_config

if TYPE_CHECKING:
    from mdagent.backfill.history import History
    from mdagent.backfill.worker import BackfillWorkers, WorkerSettings
    from mdagent.pipeline.instruments import InstrumentSync
    from mdagent.shards.supervisor import ShardSupervisor
    from mdagent.shards.zygote import Zygote

log = structlog.get_logger("mdagent.agent")

DATABASE_PROBE_EVERY_S = 5.0
# A database write running longer than this makes the agent not ready: a hung
# server (or a lock held elsewhere) otherwise looks ready until the write
# fails, which may be never. A healthy write takes well under a second.
WRITE_STUCK_AFTER_S = 60.0


# The hot path allocates a few container objects per event (frame tuples,
# record lists, COPY row tuples), nearly all short-lived and none in cycles.
# At the default gen0 threshold (700) the cyclic GC ran every few hundred
# events and its older generations kept re-walking the batches in flight: on
# the Polygon bench that was ~5% of throughput. Cycles are still collected.
GC_THRESHOLDS = (50_000, 20, 100)
# The writer thread wakes from every database round trip needing the GIL,
# which the main thread holds while it parses; at the default 5 ms switch
# interval each round trip waited up to that long for it (the BEGIN of a
# batch took 8.2 ms median at the bench's max rate, 1.5 ms at 0.5 ms).
SWITCH_INTERVAL_S = 0.0005


def tune_interpreter() -> None:
    """Collect cyclic garbage less often and hand the GIL over sooner; idempotent."""
    gc.set_threshold(*GC_THRESHOLDS)
    sys.setswitchinterval(SWITCH_INTERVAL_S)


class Agent:
    def __init__(
        self,
        config: Config,
        dsn: str,
        *,
        config_path: str | Path | None = None,
        handle_signals: bool = True,
        metrics: Metrics | None = None,
        backfill: WorkerSettings | None = None,
        instruments_retry_s: tuple[float, float] = (5.0, 600.0),
        shard: Shard | None = None,
        embedded: EmbeddedServer | None = None,
        zygote: Zygote | None = None,
    ) -> None:
        # A worker process (shard set) runs its shard of the sources; the
        # parent of workers (sharded) runs none itself.
        self.shard = shard
        self.sharded = shard is None and config.agent.workers > 1
        # The embedded server this agent started (dsn = "embedded"): kept running.
        self.embedded = embedded
        # With workers: the process they are forked from (shards/zygote.py).
        self.zygote = zygote
        self.config = self._own(config)
        self.dsn = dsn
        self.config_path = config_path
        self.handle_signals = handle_signals
        self.health = Health()
        self.metrics = metrics or Metrics()
        self.copy_writer = CopyWriter(dsn)
        self.writer = Writer(self.copy_writer, self.config.database, self.health, self.metrics)
        self.shards: ShardSupervisor | None = None
        self.http = self._health_server()
        self.metrics.registry.register(StreamCollector(self.health.per_stream))
        self.supervisor: StreamSupervisor | None = None
        self.normalizer: Normalizer | None = None
        self.backfill_settings = backfill
        self.backfill: BackfillWorkers | None = None
        self.instruments_retry_s = instruments_retry_s
        self.instruments: InstrumentSync | None = None
        self.exit_code = 0
        self._shutdown = trio.Event()
        self._signals_seen = 0

    def _own(self, config: Config) -> Config:
        """``config`` with only this process's sources (all but in a worker)."""
        if self.shard is None:
            return config
        mine = attrs.evolve(config, sources=shard_sources(config.sources, self.shard))
        return worker_config(mine, self.shard)  # its share of the memory budgets

    def _health_server(self) -> HealthServer:
        if not self.sharded:
            return HealthServer(self.health, self.metrics)
        from mdagent.shards.http import ShardedHealthServer
        from mdagent.shards.supervisor import ShardSupervisor

        # The workers read the current config at each (re)start: a reload counts.
        self.shards = ShardSupervisor(
            lambda: self.config, self.dsn, self.config_path, self.metrics, self.zygote
        )
        return ShardedHealthServer(self.health, self.metrics, self.shards)

    def request_shutdown(self) -> None:
        if not self._shutdown.is_set():
            sd_notify("STOPPING=1")
        self._shutdown.set()

    def _stuck(self) -> str | None:
        """Why systemd's watchdog should not be fed now (None: fine); see pipeline/watchdog.py."""
        interval = watchdog_interval_s()
        if interval is None:
            return None
        # A write running longer than WatchdogSec (twice the ping interval).
        return write_stuck_check(self.writer.write_running_s, 2 * interval)()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        tune_interpreter()
        # Bound before any task starts, so a port in use is one plain error
        # (ListenError) rather than a failure inside the nursery.
        listeners = None
        if self.shard is not None:
            # A worker serves its parent only: loopback, any free port (reported).
            listeners = await open_listeners("127.0.0.1", 0, "http.listen")
        elif self.config.http.enabled:
            listeners = await open_listeners(
                self.config.http.host, self.config.http.port, "http.listen"
            )
        async with trio.open_nursery() as root:
            if self.handle_signals:
                root.start_soon(self._signal_loop, root.cancel_scope, name="signals")
            if listeners is not None:
                await root.start(self.http.serve_on, listeners)
            if self.shard is not None:
                from mdagent.shards.child import report_to_parent, watch_parent

                report_to_parent(http_port=self.http.port)
                root.start_soon(watch_parent, self.request_shutdown, name="parent-watch")
            root.start_soon(run_watchdog, self._stuck, name="watchdog")
            if self.embedded is not None:
                root.start_soon(
                    keep_embedded_server, self.embedded, self.metrics, name="embedded-watch"
                )
            offsets = await self._prepare_database()
            if offsets is not None:
                if self.shard is None:
                    root.start_soon(
                        run_maintenance, self.dsn, self.config.database, name="maintenance"
                    )
                    self._start_rest(root)
                root.start_soon(self._probe_database, name="database-probe")
                if not self.sharded:
                    root.start_soon(
                        run_summary,
                        Summary(self.metrics, self.writer),
                        self.dsn,
                        lambda: self.config.agent.summary_interval_s,
                        name="summary",
                    )
                if self.shards is not None:
                    await self._run_shards(self.shards, task_status)
                else:
                    await self._run_pipeline(offsets, task_status)
            else:
                task_status.started()
            root.cancel_scope.cancel()
        log.info("agent.stopped", exit_code=self.exit_code)

    def _start_rest(self, root: trio.Nursery) -> None:
        """The venue REST work: workers that fill the gaps in fetch_jobs (those
        recorded before a restart too: start-up catch-up) for the sources with
        ``backfill = true``, and the instruments sync for those with
        ``instruments = true``, sharing one client (and budget) per venue."""
        # Imported here, once the loop runs: start-up (and a stop signal
        # during it) does not wait for the HTTP client's import.
        from mdagent.backfill.setup import histories_for
        from mdagent.backfill.worker import BackfillWorkers
        from mdagent.pipeline.instruments import InstrumentSync

        sources = self.config.sources
        histories = histories_for(sources, RestMetrics(self.metrics))
        if not histories:
            return
        backfilled = {s.provider for s in sources if s.backfill}
        for_workers = {name: h for name, h in histories.items() if name in backfilled}
        if for_workers:
            self.backfill = BackfillWorkers(
                self.dsn, for_workers, self.metrics, self.backfill_settings, close_histories=False
            )
        self.instruments = InstrumentSync(
            self.dsn,
            histories,
            lambda: self.config.sources,
            self.health,
            lambda: self.config.agent.instruments_every_s,
            self.metrics,
            retry=self.instruments_retry_s,
        )
        root.start_soon(self._run_rest, histories, name="rest")

    async def _run_rest(self, histories: dict[str, History]) -> None:
        from mdagent.backfill.worker import close_histories

        try:
            async with trio.open_nursery() as rest:
                if self.backfill is not None:
                    rest.start_soon(self.backfill.run, name="backfill")
                if self.instruments is not None:
                    rest.start_soon(self.instruments.run, name="instruments")
        finally:
            await close_histories(histories.values())

    async def _prepare_database(
        self,
    ) -> dict[tuple[str, str, str], tuple[int | None, int | None]] | None:
        """Migrate and load offsets, waiting (not ready) while the database is away.

        None when a shutdown was requested before the database came.
        """
        backoff = Backoff(0.5, 10.0)
        while not self._shutdown.is_set():
            try:
                # A worker's parent migrated before starting it; the parent
                # of workers has no stream offsets of its own to load.
                applied = [] if self.shard else await trio.to_thread.run_sync(migrate, self.dsn)
                offsets = (
                    {}
                    if self.sharded
                    else await trio.to_thread.run_sync(self.copy_writer.load_offsets)
                )
            except DatabaseUnavailable as exc:
                self.health.database_ok = False
                delay = backoff.next_delay()
                log.warning(
                    "agent.database_unavailable", error=str(exc), retry_in_s=round(delay, 2)
                )
                with trio.move_on_after(delay):
                    await self._shutdown.wait()
                continue
            if applied:
                log.info("agent.migrated", applied=applied)
            self.health.database_ok = True
            self.metrics.db_up.set(1)
            return offsets
        return None

    async def _run_pipeline(
        self,
        offsets: dict[tuple[str, str, str], tuple[int | None, int | None]],
        task_status: trio.TaskStatus[None],
    ) -> None:
        p = self.config.pipeline
        frames_send, frames_recv = trio.open_memory_channel[FrameBatch](p.frames_channel_batches)
        records_send, records_recv = trio.open_memory_channel[WriteBatch](p.records_channel_batches)
        self.normalizer = Normalizer(self.metrics, offsets, keys_total=dedup_keys(self.shard))
        self.supervisor = StreamSupervisor(frames_send, p, self.health, self.metrics)
        async with trio.open_nursery() as pipeline:
            pipeline.start_soon(self.writer.run, records_recv, name="writer")
            pipeline.start_soon(
                run_normalizer,
                self.normalizer,
                frames_recv,
                records_send,
                self.health.per_stream,
                name="normalizer",
            )
            await pipeline.start(self.supervisor.run, self.config.sources, name="streams")
            task_status.started()
            if self.shard is not None:
                from mdagent.shards.child import report_to_parent

                report_to_parent(started=True)
            sd_notify("READY=1")
            log.info("agent.started", sources=[s.key for s in self.config.sources])
            await self._shutdown.wait()
            self.health.shutting_down = True
            log.info("agent.draining", grace_s=self.config.agent.shutdown_grace_s)
            assert self.supervisor is not None
            self.supervisor.stop()
            pipeline.cancel_scope.deadline = (
                trio.current_time() + self.config.agent.shutdown_grace_s
            )
        if pipeline.cancel_scope.cancelled_caught:
            self.exit_code = 1
            log.error(
                "agent.drain_timeout",
                grace_s=self.config.agent.shutdown_grace_s,
                note="unwritten records are detected as gaps at the next start",
            )
        else:
            log.info("agent.drained", rows_committed=self.writer.rows_committed)

    async def _run_shards(
        self, shards: ShardSupervisor, task_status: trio.TaskStatus[None]
    ) -> None:
        """The parent's pipeline: the worker processes, stopped on shutdown (see shards/)."""
        async with trio.open_nursery() as nursery:
            await nursery.start(shards.run, name="shards")
            task_status.started()
            sd_notify("READY=1")
            log.info(
                "agent.started",
                workers=self.config.agent.workers,
                sources=[s.key for s in self.config.sources],
            )
            await self._shutdown.wait()
            self.health.shutting_down = True
            log.info("agent.draining", grace_s=self.config.agent.shutdown_grace_s)
            shards.stop()
        if shards.killed or shards.failed:
            self.exit_code = 1
            log.error(
                "agent.drain_timeout",
                grace_s=self.config.agent.shutdown_grace_s,
                killed_workers=shards.killed,
                failed_workers=shards.failed,
                note="unwritten records are detected as gaps at the next start",
            )
        else:
            log.info("agent.drained", workers=self.config.agent.workers)

    async def _probe_database(self) -> None:
        """Keep readiness true to the database: a write that hangs, or nothing written."""
        while True:
            await trio.sleep(DATABASE_PROBE_EVERY_S)
            running = self.writer.write_running_s()
            stuck = running is not None and running > WRITE_STUCK_AFTER_S
            self.health.report(
                "database write",
                [f"a database write has run for {running:.0f} s"] if stuck else [],
            )
            if running is None and (
                trio.current_time() - self.writer.last_commit_at > DATABASE_PROBE_EVERY_S
            ):
                await self.writer.check_database()

    async def reload(self) -> bool:
        """Re-read the config file; apply source changes without touching unchanged streams."""
        if self.config_path is None:
            return False
        try:
            new = await trio.to_thread.run_sync(load_config, self.config_path)
        except ConfigError as exc:
            log.error("agent.reload_rejected", problems=exc.problems)
            return False
        await self.apply_config(new)
        return True

    async def apply_config(self, new: Config) -> None:
        old = self.config
        new = self._own(new)
        restart_needed = [
            name
            for name in ("database", "http", "pipeline")
            if getattr(old, name) != getattr(new, name)
        ]
        if new.agent.workers != old.agent.workers:
            restart_needed.append("agent.workers")
        if restart_needed:
            log.warning("agent.reload_partial", needs_restart=restart_needed)
        if new.agent != old.agent:
            configure_logging(new.agent.log_level, new.agent.log_format)
        self.config = Config(
            sources=new.sources,
            agent=attrs.evolve(new.agent, workers=old.agent.workers),
            database=old.database,
            http=old.http,
            pipeline=old.pipeline,
        )
        if self.supervisor is not None:
            await self.supervisor.apply(new.sources)
        if self.instruments is not None:
            self.instruments.recheck()
        log.info("agent.reloaded", sources=[s.key for s in new.sources])

    async def _signal_loop(self, root_scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            early = interrupts.stop_requested()
            if early is not None:
                self._signals_seen += 1
                log.info("agent.shutdown_requested", signal=early.name, during="start-up")
                self.request_shutdown()
            elif interrupts.take_reload_request():
                # The config was read before that SIGHUP (no systemd RELOADING:
                # the unit is not ready yet).
                log.info("agent.sighup", during="start-up")
                await self.reload()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("agent.sighup")
                    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
                    sd_notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")
                    if await self.reload() and self.shards is not None:
                        # Each worker re-reads the file and keeps its shard.
                        self.shards.send_signal(signal.SIGHUP)
                    sd_notify("READY=1")
                    continue
                self._signals_seen += 1
                if self._signals_seen == 1:
                    log.info("agent.shutdown_requested", signal=signal.Signals(signum).name)
                    self.request_shutdown()
                else:
                    log.error("agent.forced_exit", signal=signal.Signals(signum).name)
                    self.exit_code = 1
                    root_scope.cancel()


def run_agent_main(config: Config, *, config_path: str | Path | None = None) -> int:
    """The `mdagent run` entry point: logging, database, then the trio loop.

    A stop signal during start-up (the embedded server starting) ends the
    run cleanly: the server is stopped again, the reason logged, exit 0.
    """
    configure_logging(config.agent.log_level, config.agent.log_format)
    before, now = raise_file_limit()
    log.debug("agent.file_limit", soft_before=before, soft=now)
    db = config.database
    # Before the embedded server and the loop start their threads: see zygote.py.
    zygote = start_zygote(config)
    try:
        with embedded_or_dsn(db.dsn, db.data_dir, db.embedded) as (dsn, server):
            agent = Agent(config, dsn, config_path=config_path, embedded=server, zygote=zygote)
            # The loop reads signals itself; one that came before it opened
            # its receiver is picked up there (interrupts.stop_requested()).
            with interrupts.deferred():
                trio.run(agent.run)
                agent.copy_writer.close()
    except interrupts.Interrupted as exc:
        log.info("agent.stopped", reason=f"{exc.signal.name} during start-up", exit_code=0)
        return 0
    finally:
        if zygote is not None:
            zygote.close()
    return agent.exit_code


def start_zygote(config: Config) -> Zygote | None:
    """The process worker processes are forked from, with ``[agent] workers`` > 1
    (None: one process, or forking is not safe here: workers are exec'd)."""
    if config.agent.workers <= 1:
        return None
    from mdagent.shards.zygote import Zygote

    zygote = Zygote.start()
    log.debug("agent.zygote", pid=None if zygote is None else zygote.pid)
    return zygote
