"""One worker process, as its parent keeps it: started, watched, restarted, stopped.

```
WorkerProcess.run (task "shard:<i>" in the shards nursery)
└── loop: spawn the worker (this interpreter, child.main) -> hello on its stdin
    ├── reports: its stdout lines (http_port, started)
    ├── stop: on stop(), its stdin closed, SIGKILL after shutdown_grace_s + margin
    └── wait for its exit; unless stopping: restart after a backoff
```

A worker that dies (a crash, ``kill -9``, the OOM killer) is started again
after 0.5 s, doubling to 30 s while it keeps dying, back to 0.5 s once it
ran 60 s (after at least 2 s when it exited cleanly, with status 0: a
stop signal that reached it, such as a terminal's Ctrl-C, is probably on its
way to the parent too). Its streams then catch up as after any reconnect: the new worker
loads the committed offsets, and what was lost in between is a gap the
parent's backfill workers fill.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import structlog
import trio

import mdagent
from mdagent.config import CONVERTER, Config
from mdagent.pipeline.backoff import Backoff
from mdagent.pipeline.metrics import Metrics
from mdagent.shards.assign import Shard
from mdagent.shards.zygote import ForkedWorker, Zygote

log = structlog.get_logger("mdagent.shards")

RESTART_INITIAL_S = 0.5
RESTART_MAX_S = 30.0
STABLE_AFTER_S = 60.0
# A worker that exited with status 0 is restarted after at least this long.
CLEAN_EXIT_WAIT_S = 2.0
# Past shutdown_grace_s (the worker's own drain deadline) the worker gets
# this long to exit before it is killed: its interpreter's exit takes time.
KILL_MARGIN_S = 5.0
# The service manager's variables stay the parent's: only it talks to systemd.
PARENT_ONLY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")


# The worker imports mdagent from where this process did: the folder holding
# the package (a checkout, site-packages, or the zipapp's unpacked
# site-packages) goes first on its path. Set by -c rather than PYTHONPATH,
# which an isolated interpreter (python -I, as a zipapp may be run) ignores.
# Its first act is mdagent.entry's: a SIGHUP (the parent passes reloads on,
# also to a worker still starting) is recorded, not the end of the process.
_BOOT = (
    "import sys; sys.path.insert(0, {root!r}); import mdagent.entry; "
    "from {module} import {function} as main; sys.exit(main())"
)


def mdagent_command(module: str, function: str, *args: str) -> list[str]:
    """This interpreter running ``function()`` of ``module`` from this mdagent; its
    ``sys.argv[1:]`` is ``args``, its exit status what the function returns."""
    root = str(Path(mdagent.__file__).resolve().parent.parent)
    boot = _BOOT.format(root=root, module=module, function=function)
    return [sys.executable, "-c", boot, *args]


def worker_command() -> list[str]:
    """The command starting a worker: this interpreter, this mdagent, the parent's pid."""
    return mdagent_command("mdagent.shards.child", "main", str(os.getpid()))


def worker_environment() -> dict[str, str]:
    """The parent's environment (the sources' secrets included), without systemd's."""
    return {k: v for k, v in os.environ.items() if k not in PARENT_ONLY_ENV}


class WorkerProcess:
    """Worker ``shard`` of the parent: its process while it runs, restarted until stop().

    ``config``: the parent's current config (read at each start, so a
    reload counts). ``http_port``: the worker's loopback HTTP port while it
    runs (None before it reported one). ``started``: set while its pipeline
    runs (replaced by a new event when it exits). ``restarts``: how often it died and
    was started again. ``killed``: it had to be killed at stop.
    """

    def __init__(
        self,
        shard: Shard,
        config: Callable[[], Config],
        dsn: str,
        config_path: str | Path | None,
        metrics: Metrics,
        zygote: Zygote | None = None,
    ) -> None:
        self.shard = shard
        # Forks the worker when there is one (zygote.py); else it is exec'd.
        self._zygote = zygote
        self._config = config
        self._dsn = dsn
        self._config_path = None if config_path is None else str(config_path)
        self._metrics = metrics
        self._stop = trio.Event()
        self.process: trio.Process | ForkedWorker | None = None
        self.http_port: int | None = None
        # Set once the running worker's pipeline runs; a new one per start.
        self.started = trio.Event()
        self.restarts = 0
        self.killed = False
        self.final_status: int | None = None  # its exit status once stopped

    @property
    def pid(self) -> int | None:
        proc = self.process
        return proc.pid if proc is not None and proc.returncode is None else None

    def stop(self) -> None:
        """Stop the worker gracefully (end of its stdin; SIGKILL past the grace), no restart."""
        self._stop.set()

    def send_signal(self, signum: int) -> None:
        """Pass ``signum`` on to the running worker (none: nothing to do)."""
        proc = self.process
        if proc is not None and proc.returncode is None:
            proc.send_signal(signum)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        backoff = Backoff(RESTART_INITIAL_S, RESTART_MAX_S)
        while not self._stop.is_set():
            began = trio.current_time()
            try:
                status = await self._run_once()
            except OSError as exc:
                # Could not start it (out of descriptors, memory): retried
                # like a death, never a reason to stop the others.
                log.error("shard.spawn_failed", worker=self.shard.index, error=str(exc))
                status = -1
            if self._stop.is_set():
                self.final_status = status
                log.info("shard.worker_stopped", worker=self.shard.index, exit_status=status)
                return
            if trio.current_time() - began >= STABLE_AFTER_S:
                backoff.reset()
            delay = backoff.next_delay()
            if status == 0:
                # A clean exit: a stop signal reached the worker itself (a
                # terminal's Ctrl-C reaches the whole process group) and may
                # reach this process a moment later. Not a death before then.
                delay = max(delay, CLEAN_EXIT_WAIT_S)
            (log.warning if status == 0 else log.error)(
                "shard.worker_exited",
                worker=self.shard.index,
                exit_status=status,
                restart_in_s=round(delay, 2),
            )
            with trio.move_on_after(delay):
                await self._stop.wait()
            if self._stop.is_set():
                self.final_status = status
                return
            self.restarts += 1
            self._metrics.worker_restarts.labels(str(self.shard.index)).inc()

    def _hello(self) -> bytes:
        hello = {
            "dsn": self._dsn,
            "config": CONVERTER.unstructure(self._config()),
            "config_path": self._config_path,
            "shard": [self.shard.index, self.shard.count],
        }
        return json.dumps(hello).encode() + b"\n"

    async def _start(self) -> trio.Process | ForkedWorker:
        """The worker: forked in the zygote while it answers, else a new interpreter."""
        zygote = self._zygote
        if zygote is not None and zygote.alive:
            try:
                return await zygote.spawn()
            except OSError as exc:
                log.warning("shard.zygote_failed", worker=self.shard.index, error=str(exc))
        return await trio.lowlevel.open_process(
            worker_command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=worker_environment(),
        )

    async def _run_once(self) -> int:
        """Start the worker, serve it until it exits; its exit status (negative: signal)."""
        proc = await self._start()
        self.process = proc
        try:
            assert proc.stdin is not None and proc.stdout is not None
            log.info("shard.worker_spawned", worker=self.shard.index, pid=proc.pid)
            try:
                await proc.stdin.send_all(self._hello())
            except trio.BrokenResourceError:
                pass  # it died at once; its exit status says why
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_reports, proc.stdout)
                nursery.start_soon(self._stop_on_request, proc)
                await proc.wait()
                nursery.cancel_scope.cancel()
        finally:
            self.http_port = None
            if self.started.is_set():
                self.started = trio.Event()
            if proc.returncode is None:
                # Cancelled (a forced exit): never leave it behind.
                proc.kill()
                with trio.CancelScope(shield=True):
                    if isinstance(proc, ForkedWorker):
                        # The zygote's exit report cannot come: its reader
                        # was cancelled by the same forced exit. The pidfd
                        # says when the process is gone.
                        await proc.wait_without_zygote()
                    else:
                        await proc.wait()
            with trio.CancelScope(shield=True):
                for pipe in (proc.stdin, proc.stdout):
                    if pipe is not None:
                        await pipe.aclose()
        assert proc.returncode is not None
        return proc.returncode

    async def _read_reports(self, stdout: trio.abc.ReceiveStream) -> None:
        buffered = b""
        while chunk := await stdout.receive_some(4096):
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                try:
                    report = json.loads(line)
                except ValueError:
                    # Only report_to_parent writes here (the worker's fd 1 is
                    # its stderr); anything else is a bug to see, not a crash.
                    log.warning("shard.bad_report", worker=self.shard.index, line=line[:200])
                    continue
                if "http_port" in report:
                    self.http_port = int(report["http_port"])
                if report.get("started"):
                    self.started.set()

    async def _stop_on_request(self, proc: trio.Process | ForkedWorker) -> None:
        await self._stop.wait()
        # End of its stdin is the stop request (child.py), not SIGTERM: a
        # worker that also got the signal itself (Ctrl-C reaches the whole
        # process group) would take a second one as "force".
        assert proc.stdin is not None
        await proc.stdin.aclose()
        with trio.move_on_after(self._config().agent.shutdown_grace_s + KILL_MARGIN_S):
            await proc.wait()
            return
        self.killed = True
        log.error("shard.worker_killed", worker=self.shard.index, pid=proc.pid)
        proc.kill()
