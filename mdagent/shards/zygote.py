"""Worker processes forked from a zygote: the parent's imports shared, not repeated.

A worker started as a new interpreter (process.py's ``worker_command``)
builds every module it imports again: ~32 MB of private memory each, of
the ~39 MB of PSS a worker holds after its imports (README, Benchmarks,
"Memory with worker processes"). A forked process shares its parent's
pages until either writes to them, so a worker forked from a process that
already imported the worker's modules shares most of them.

The zygote is that process: ``mdagent run`` forks it off (:meth:`Zygote.start`)
before anything else starts, after importing the worker's modules:

```
parent (mdagent run)            zygote (fork, before trio.run)        worker (fork of the zygote)
 ├── Zygote.start() ─ fork ──▶  _serve: a loop on its socket  ── fork ──▶ child.main (as exec'd)
 ├── trio.run(agent.run)         "spawn" + the worker's stdin/stdout ◀── its pipes from the parent
 │   └── WorkerProcess ──────▶  replies {"pid"}, later {"exited", "status"}
 └── close(): socket closed ──▶ exits
```

**Why forking is safe here.** ``fork()`` copies only the calling thread:
locks other threads held (the allocator's, the import lock, logging's,
trio's) stay held in the copy for ever. The parent forks the zygote before
``trio.run`` and before the embedded server starts, and only when it runs
one thread (:meth:`Zygote.start` checks ``/proc/self/task``; otherwise
there is no zygote and workers are exec'd as before). The zygote never
starts a thread or an event loop: it is single-threaded whenever it forks a
worker. Nothing the parent does later (its loop, its threads, its
connections) exists in the zygote. A worker forked from it closes every
descriptor but its stdin, stdout and stderr, puts back the signal
dispositions of a new interpreter, and ends with ``os._exit`` so that no
exit handler inherited from the parent (the embedded server's) runs in it.
Objects alive at the fork are ``gc.freeze()``d: the collector never walks
(writes to) them, in the zygote, the workers or the parent, which keeps
their pages shared.

**What stays the same.** The parent still holds each worker's stdin (its
stop request and parent-death signal) and stdout (its reports); the hello
still carries the config, so a reload counts. Only the process that reaps a
worker changes: the zygote reports the exit status. The parent signals
workers through pidfds (``pidfd_open``), which name the process, not a pid
that could be reused. If the zygote dies, workers it started are waited for
through their pidfds (exit status -1), and new workers are exec'd.
"""

from __future__ import annotations

import array
import contextlib
import gc
import importlib
import json
import os
import select
import signal
import socket
import sys
import traceback
from typing import Any

import structlog
import trio

log = structlog.get_logger("mdagent.shards")

# What a worker imports that a parent might not have (its pipeline, the
# providers' parsers and clients): imported before the fork, so shared.
WORKER_MODULES = (
    "mdagent.shards.child",
    "mdagent.pipeline.agent",
    "mdagent.pipeline.writer",
    "mdagent.pipeline.normalizer",
    "mdagent.pipeline.supervisor",
    "mdagent.pipeline.stream",
    "mdagent.providers.registry",
    "mdagent.providers.wsclient",
    "mdagent.db.copy_writer",
    "mdagent.db.copy_rows",
    "mdagent.db.prepare",
)
# A spawn the zygote does not answer within this is a failure (exec instead).
SPAWN_TIMEOUT_S = 30.0
# After a worker exited (its pidfd readable), its status should follow at once.
STATUS_TIMEOUT_S = 10.0
_MESSAGE_MAX = 4096


def _pidfds_work() -> bool:
    """This kernel (Linux 5.3) and the service's system call filter let this process
    open a pidfd and signal through it (signal 0: only checked): how the parent
    signals forked workers."""
    try:
        pidfd = os.pidfd_open(os.getpid())
        try:
            signal.pidfd_send_signal(pidfd, 0)
        finally:
            os.close(pidfd)
    except (AttributeError, OSError):
        return False
    return True


def single_threaded() -> bool:
    """This process runs one thread (C threads included): safe to fork."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


class ForkedWorker:
    """A worker the zygote forked: what process.py uses of a ``trio.Process``.

    ``stdin`` / ``stdout``: the parent's ends of its pipes. ``returncode``:
    None while it runs, then its exit status as ``subprocess`` gives it
    (negative: the signal that ended it; -1 when the zygote could not say).
    """

    def __init__(
        self,
        pid: int,
        pidfd: int | None,
        stdin: trio.lowlevel.FdStream,
        stdout: trio.lowlevel.FdStream,
    ) -> None:
        self.pid = pid
        self._pidfd = pidfd
        self.stdin: trio.abc.SendStream | None = stdin
        self.stdout: trio.abc.ReceiveStream | None = stdout
        self.returncode: int | None = None
        self._exited = trio.Event()

    async def wait(self) -> int:
        """Its exit status, once it exited."""
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        """Signal it through its pidfd (nothing once it exited)."""
        if self.returncode is None and self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def exited(self, status: int) -> None:
        """Record its exit status (the zygote's report, or -1); its pidfd is closed."""
        if self.returncode is not None:
            return
        self.returncode = status
        if self._pidfd is not None:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        self._exited.set()

    async def wait_without_zygote(self) -> None:
        """Its exit seen through its pidfd (the zygote is gone): status -1."""
        if self._pidfd is not None:
            with contextlib.suppress(trio.ClosedResourceError):
                await trio.lowlevel.wait_readable(self._pidfd)
        self.exited(-1)


class Zygote:
    """The parent's side of the zygote: :meth:`spawn` forks a worker there.

    :meth:`run` must run (in the shards nursery) while workers are spawned
    and waited for. ``alive``: the zygote answers (False once its socket
    ended or a spawn failed: workers are exec'd from then on).
    """

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self._stdlib_sock = sock
        self._sock = trio.socket.from_stdlib_socket(sock)
        self.pid = pid
        self.alive = True
        self._workers: dict[int, ForkedWorker] = {}
        self._pids_send, self._pids_receive = trio.open_memory_channel[int](1)
        self._lock = trio.Lock()
        self._nursery: trio.Nursery | None = None

    @classmethod
    def start(cls) -> Zygote | None:
        """Import the workers' modules and fork the zygote; None when this process
        runs more than one thread (forking it would not be safe) or fork fails."""
        if sys.platform != "linux" or not _pidfds_work():
            return None
        for name in WORKER_MODULES:
            importlib.import_module(name)
        if not single_threaded():
            return None
        sys.stdout.flush()
        sys.stderr.flush()
        gc.collect()
        gc.freeze()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = os.fork()
        except OSError as exc:
            log.warning("shard.zygote_failed", error=str(exc))
            ours.close()
            theirs.close()
            return None
        if pid == 0:  # the zygote
            status = 0
            try:
                ours.close()
                # It holds nothing of the parent's (listening sockets, files)
                # but its socket and the standard descriptors.
                fd = theirs.fileno()
                os.closerange(3, fd)
                os.closerange(fd + 1, os.sysconf("SC_OPEN_MAX"))
                _serve(theirs)
            except BaseException:
                traceback.print_exc()
                status = 1
            finally:
                os._exit(status)
        theirs.close()
        return cls(ours, pid)

    def close(self) -> None:
        """End the zygote (its socket closed) and reap it; idempotent."""
        if self._stdlib_sock.fileno() != -1:
            self._stdlib_sock.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        self.alive = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read the zygote's replies (pids) and reports (exit statuses) until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                while message := await self._sock.recv(_MESSAGE_MAX):
                    report = json.loads(message)
                    if "pid" in report:
                        await self._pids_send.send(int(report["pid"]))
                    elif "exited" in report:
                        worker = self._workers.pop(int(report["exited"]), None)
                        if worker is not None:
                            worker.exited(int(report["status"]))
            except OSError as exc:
                log.warning("shard.zygote_lost", error=str(exc))
            if self.alive:
                log.warning("shard.zygote_exited", pid=self.pid)
            self._lose()
            await trio.sleep_forever()

    def _lose(self) -> None:
        """The zygote is gone: its workers are waited for through their pidfds."""
        self.alive = False
        assert self._nursery is not None
        for worker in self._workers.values():
            self._nursery.start_soon(worker.wait_without_zygote)
        self._workers.clear()

    async def spawn(self) -> ForkedWorker:
        """Fork a worker in the zygote, its stdin and stdout piped to this process.

        OSError when the zygote does not answer (it is then no longer used).
        """
        async with self._lock:
            if not self.alive:
                raise OSError("the zygote is gone")
            stdin_r, stdin_w = os.pipe()
            stdout_r, stdout_w = os.pipe()
            try:
                fds = array.array("i", [stdin_r, stdout_w])
                await self._sock.sendmsg([b"spawn"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                with trio.fail_after(SPAWN_TIMEOUT_S):
                    pid = await self._pids_receive.receive()
            except BaseException as exc:
                # Not used again: a reply still on its way would answer the next spawn.
                self.alive = False
                for fd in (stdin_w, stdout_r):
                    os.close(fd)  # a worker forked all the same reads end-of-file: it exits
                if isinstance(exc, OSError | trio.TooSlowError):
                    raise OSError(f"spawn in the zygote: {exc!r}") from exc
                raise
            finally:
                os.close(stdin_r)
                os.close(stdout_w)
        try:
            pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            pidfd = None  # gone already: its status is on its way
        worker = ForkedWorker(
            pid, pidfd, trio.lowlevel.FdStream(stdin_w), trio.lowlevel.FdStream(stdout_r)
        )
        if self.alive:
            self._workers[pid] = worker
        else:
            assert self._nursery is not None
            self._nursery.start_soon(worker.wait_without_zygote)
        return worker


def _serve(sock: socket.socket) -> None:
    """The zygote's loop: fork a worker per request, report each one's exit."""
    # A terminal's Ctrl-C reaches the whole process group: the zygote ends
    # when the parent closes its socket, not before its workers' drain.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    zygote_pid = os.getpid()
    while True:
        ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
            _report_exits(sock)
        if sock.fileno() in ready:
            message, fds, _flags, _addr = socket.recv_fds(sock, _MESSAGE_MAX, 2)
            if not message:
                return  # the parent closed its end (stopping, or gone)
            pid = os.fork()
            if pid == 0:
                _become_worker(fds, zygote_pid)
            for fd in fds:
                os.close(fd)
            _send(sock, {"pid": pid})


def _report_exits(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, {"exited": pid, "status": os.waitstatus_to_exitcode(status)})


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # the parent is gone: nobody to tell
        sock.send(json.dumps(message).encode())


def _become_worker(fds: list[int], zygote_pid: int) -> None:
    """In the forked worker: a new interpreter's state, then child.main; never returns."""
    status = 1
    try:
        from mdagent import interrupts
        from mdagent.shards.child import main
        from mdagent.shards.process import PARENT_ONLY_ENV

        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, interrupts.note_reload)  # as mdagent.entry
        os.dup2(fds[0], 0)
        os.dup2(fds[1], 1)
        # The zygote's socket and pipe, and whatever the parent had open at
        # the fork: a worker holds only what an exec'd one would.
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        for name in PARENT_ONLY_ENV:
            os.environ.pop(name, None)
        status = main([str(zygote_pid)])
    except SystemExit as exc:
        code = exc.code
        if code is None:
            status = 0
        elif isinstance(code, int):
            status = code
        else:
            print(code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)
