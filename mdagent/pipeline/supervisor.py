"""The streams nursery: one restartable task per source, started and stopped by key.

Each stream task runs in its own cancel scope, handed back through
``task_status.started(scope)``, so a reload can stop exactly the sources that
changed while unchanged ones keep their connections.
"""

from __future__ import annotations

import attrs
import structlog
import trio

from mdagent.config import PipelineConfig, SourceConfig
from mdagent.pipeline.batches import FrameBatch
from mdagent.pipeline.health import Health
from mdagent.pipeline.metrics import Metrics
from mdagent.pipeline.stream import StreamTask
from mdagent.providers.registry import provider_for

log = structlog.get_logger("mdagent.supervisor")

_CRASH_RESTART_S = 5.0
# A stream stopped by a reload gets this long to hand on what it read.
_STOP_GRACE_S = 10.0
# A live resubscribe (a few paced control messages and their replies) gets
# this long; past it the subscription is unknown and the source restarts.
_UPDATE_LIVE_S = 10.0


class StreamSupervisor:
    def __init__(
        self,
        frames_out: trio.MemorySendChannel[FrameBatch],
        pipeline: PipelineConfig,
        health: Health,
        metrics: Metrics,
    ) -> None:
        self._frames_out = frames_out
        self._pipeline = pipeline
        self._health = health
        self._metrics = metrics
        self._running: dict[str, tuple[SourceConfig, trio.CancelScope]] = {}
        self._nursery: trio.Nursery | None = None
        self.tasks: dict[str, StreamTask] = {}
        self._stop_requested = trio.Event()

    def stop(self) -> None:
        """Graceful stop of every stream: each hands on what it read, then returns."""
        self._stop_requested.set()
        for task in self.tasks.values():
            task.stop()

    async def run(
        self,
        sources: tuple[SourceConfig, ...],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Own the streams nursery until cancelled; closes the frames channel on exit."""
        async with self._frames_out, trio.open_nursery() as nursery:
            self._nursery = nursery
            await self.apply(sources)
            task_status.started()
            await self._stop_requested.wait()
            # The stream tasks are leaving (stop()); the nursery waits for them.

    async def apply(self, sources: tuple[SourceConfig, ...]) -> None:
        """Make the running set equal ``sources``: stop removed or changed, start new."""
        wanted = {s.key: s for s in sources}
        successors = self._successors(wanted)
        for key, (running, scope) in list(self._running.items()):
            # A source stuck in auth_failed restarts on any reload: the usual
            # fix is a corrected secret in the environment, not in the file.
            auth_failed = self._health.stream(key).auth_failed
            new = wanted.get(key) or successors.get(key)
            live = new is not None and new != running and not auth_failed
            if live and new is not None and await self._update_live(key, running, new):
                self._rekey(key, new, scope)
                continue
            if wanted.get(key) != running or auth_failed:
                log.info(
                    "stream.stopping",
                    source=key,
                    reason="removed"
                    if key not in wanted
                    else "changed"
                    if not auth_failed
                    else "auth_failed",
                )
                # Graceful: the frames it already read still reach the
                # database; the deadline bounds a stop stuck on a full channel.
                self.tasks.pop(key).stop()
                scope.deadline = min(scope.deadline, trio.current_time() + _STOP_GRACE_S)
                del self._running[key]
                self._health.forget_stream(key)
                self._health.per_stream.detach(key)
        for key, source in wanted.items():
            if key not in self._running:
                assert self._nursery is not None
                scope = await self._nursery.start(self._run_one, source, name=f"stream:{key}")
                self._running[key] = (source, scope)

    def _successors(self, wanted: dict[str, SourceConfig]) -> dict[str, SourceConfig]:
        """Running unnamed sources -> the new source that differs only in its symbols.

        An unnamed source's key spells its symbols, so a reload of them gives
        it a new key; paired here, it is changed live like a named one. Each
        new source pairs with at most one running source.
        """
        found: dict[str, SourceConfig] = {}
        taken: set[str] = set()
        for key, (running, _scope) in self._running.items():
            if running.name or key in wanted:
                continue
            for new in wanted.values():
                if new.name or new.key in self._running or new.key in taken:
                    continue
                if attrs.evolve(running, symbols=new.symbols) == new:
                    found[key] = new
                    taken.add(new.key)
                    break
        return found

    def _rekey(self, key: str, new: SourceConfig, scope: trio.CancelScope) -> None:
        """Record that the task of ``key`` now runs ``new`` (whose key may differ)."""
        del self._running[key]
        self._running[new.key] = (new, scope)
        if new.key == key:
            return
        self.tasks[new.key] = self.tasks.pop(key)
        health = self._health.streams.pop(key, None)
        if health is not None:
            self._health.streams[new.key] = health
        connected = self._metrics.stream_connected
        connected.labels(new.key).set(1 if health is not None and health.connected else 0)
        for metric in (connected, self._metrics.stream_last_frame):
            try:
                metric.remove(key)
            except KeyError:
                pass  # never set
        log.info("stream.renamed", source=new.key, was=key)

    async def _update_live(self, key: str, running: SourceConfig, new: SourceConfig) -> bool:
        """Change only the symbols of a running source on its live connection; False: restart.

        Connection-level settings (URL, key, channels, anything but symbols)
        need a new connection, so only a symbols change is tried live.
        """
        if attrs.evolve(running, symbols=new.symbols) != new:
            return False
        with trio.move_on_after(_UPDATE_LIVE_S):
            if await self.tasks[key].update(new):
                log.info(
                    "stream.updated_live",
                    source=key,
                    added=sorted(set(new.symbols) - set(running.symbols)),
                    removed=sorted(set(running.symbols) - set(new.symbols)),
                )
                return True
        return False

    async def _run_one(
        self, source: SourceConfig, *, task_status: trio.TaskStatus[trio.CancelScope]
    ) -> None:
        with trio.CancelScope() as scope:
            task = StreamTask(
                source,
                provider_for(source.provider).stream,
                self._frames_out.clone(),
                self._pipeline,
                self._health.stream(source.key),
                self._metrics,
                streams=self._health.per_stream,
            )
            self.tasks[source.key] = task
            task_status.started(scope)
            while not task.stopping:
                try:
                    await task.run()
                except Exception:
                    # The isolation boundary of one stream: a bug met by one
                    # source (known transient errors never get here) must not
                    # stop the others. Logged with its traceback, restarted.
                    log.exception(
                        "stream.crashed", source=task.source.key, restart_in_s=_CRASH_RESTART_S
                    )
                    # task.source: a live reload may have changed an unnamed source's key.
                    self._health.stream(task.source.key).connected = False
                    await trio.sleep(_CRASH_RESTART_S)
                    task.frames_out = self._frames_out.clone()

    @property
    def running(self) -> dict[str, SourceConfig]:
        return {k: v[0] for k, v in self._running.items()}
