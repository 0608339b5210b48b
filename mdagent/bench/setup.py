"""The bench's fake venue processes and fresh databases."""

from __future__ import annotations

import contextlib
import json
import selectors
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence

import attrs
import psycopg
from psycopg import conninfo

from mdagent.db.dsn import dsn_problem, masked_dsn
from mdagent.db.migrate import migrate
from mdagent.procs import end_process
from mdagent.testing.kit import BenchError, kit_for

VENUE_START_TIMEOUT_S = 30.0


@attrs.define
class Venue:
    proc: subprocess.Popen[bytes]
    ws_url: str
    rest_url: str
    api_keys: list[str]


@contextlib.contextmanager
def fake_venue(
    provider: str, symbols: Sequence[str], rate: float, keys: int, *, late_trades: bool = True
) -> Iterator[Venue]:
    """The fake venue as a child process (``mdagent fake-venue``), terminated on exit.

    ``late_trades=False``: no trades reported late (their event time is
    deliberately old, which would measure the fake, not the agent's latency)."""
    api_keys = [f"bench-key-{i}" for i in range(max(1, keys))]
    cmd = [
        sys.executable, "-m", "mdagent", "fake-venue", provider,
        "--symbols", ",".join(symbols), "--rate", repr(float(rate)),
        "--port", "0", "--rest-port", "0",
    ]  # fmt: skip
    cmd += kit_for(provider).bench.venue_args(api_keys, late_trades=late_trades, max_rate=rate == 0)
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr)
        try:
            line = _read_line(proc, VENUE_START_TIMEOUT_S)
            if not line:
                proc.kill()
                proc.wait()
                stderr.seek(0)
                tail = stderr.read()[-2000:].decode("utf-8", "replace")
                raise BenchError(f"the fake venue did not start: {' '.join(cmd)}\n{tail}")
            urls = json.loads(line)
            yield Venue(proc, urls["ws_url"], urls["rest_url"], api_keys)
        finally:
            end_process(proc)
            if proc.stdout is not None:
                proc.stdout.close()


def _read_line(proc: subprocess.Popen[bytes], timeout_s: float) -> bytes:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            return b""
    return proc.stdout.readline()


@contextlib.contextmanager
def database_server(dsn: str) -> Iterator[str]:
    """A server DSN: ``--dsn`` as given, or an embedded server in a temporary directory."""
    if dsn != "embedded":
        yield dsn
        return
    from mdagent.db.embedded import start_embedded

    with tempfile.TemporaryDirectory(prefix="mdagent-bench-") as tmp:
        server = start_embedded(tmp)
        try:
            yield server.get_uri()
        finally:
            with contextlib.suppress(Exception):
                server.cleanup()


@contextlib.contextmanager
def fresh_database(server_dsn: str, label: str) -> Iterator[str]:
    """A new, migrated database on the server; dropped on exit."""
    name = f"mdagent_bench_{label}_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(server_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        # libpq's parse errors quote the DSN (its password too): say why it
        # does not parse with dsn_problem, and show the server masked.
        reason = dsn_problem(server_dsn) or (str(exc).strip().splitlines() or ["?"])[0]
        raise BenchError(
            f"cannot create a database on {masked_dsn(server_dsn)!r}: {reason}"
        ) from exc
    dsn = conninfo.make_conninfo(server_dsn, dbname=name)
    try:
        migrate(dsn)
        yield dsn
    finally:
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(server_dsn, autocommit=True) as conn,
        ):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
