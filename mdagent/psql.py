"""`mdagent psql` and `mdagent dsn`: the configured database, embedded or not, by hand.

psql is the one in the PostgreSQL wheel, so nothing else needs installing.
No secret goes on psql's command line, which every user of the machine sees
in ``ps``: the password is handed over in ``PGPASSWORD``, and ``sslpassword``
(the client key's passphrase, which has no environment variable) in a
connection service file readable only by us (``PGSERVICEFILE``), removed
when psql ends.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from psycopg import conninfo

from mdagent import interrupts
from mdagent.config import Config
from mdagent.db.dsn import EMBEDDED, masked_dsn
from mdagent.db.embedded import EmbeddedServer, bin_dir, database_dsn
from mdagent.errors import MdagentError

# The section of the private service file psql is pointed at.
_SERVICE = "mdagent-psql"


def psql_connection(dsn: str) -> tuple[str, dict[str, str], str | None]:
    """How to hand ``dsn`` to psql without a secret in its arguments: (the
    connection string argument, environment variables to add, the text of a
    service file holding ``sslpassword``, or None when there is none).

    Raises MdagentError when ``sslpassword`` cannot be passed that way: the DSN
    names its own ``service`` (one service file at a time), or the value ends
    in whitespace or holds a line break (a service file line would cut it).
    """
    params = {k: str(v) for k, v in conninfo.conninfo_to_dict(dsn).items()}
    env: dict[str, str] = {}
    password = params.pop("password", None)
    if password is not None:
        env["PGPASSWORD"] = password
    service = None
    sslpassword = params.pop("sslpassword", None)
    if sslpassword is not None:
        if "service" in params:
            raise MdagentError(
                f"psql: sslpassword and service={params['service']} together: put"
                " sslpassword in that service's entry (on the command line, ps would show it)"
            )
        if sslpassword != sslpassword.rstrip() or "\n" in sslpassword or "\r" in sslpassword:
            raise MdagentError(
                "psql: the DSN's sslpassword ends in whitespace or holds a line break:"
                " psql cannot be given it without showing it in ps"
            )
        params["service"] = _SERVICE
        service = f"[{_SERVICE}]\nsslpassword={sslpassword}\n"
    return conninfo.make_conninfo("", **params), env, service


def run_psql(config: Config, sql: str | Sequence[str] | None) -> int:
    """psql on the configured database (``-c sql`` for each one given, in order); psql's exit code."""
    db = config.database
    with (
        database_dsn(db.dsn, db.data_dir, db.embedded) as dsn,
        tempfile.TemporaryDirectory(prefix="mdagent-psql-") as private,  # mode 0700
    ):
        target, secrets, service = psql_connection(dsn)
        env = {**os.environ, **secrets}
        if service is not None:
            path = Path(private) / "pg_service.conf"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(fd, "w", encoding="utf-8") as file:
                file.write(service)
            env["PGSERVICEFILE"] = str(path)
        args = [str(bin_dir() / "psql"), target]
        commands = [sql] if isinstance(sql, str) else list(sql or ())
        if commands:
            args += ["-v", "ON_ERROR_STOP=1"]
            for command in commands:
                args += ["-c", command]
        # psql handles Ctrl-C itself (it cancels the query); here it only
        # must not cut the session short or skip the server's release.
        with interrupts.deferred():
            return subprocess.call(args, env=env)


def describe_dsn(config: Config, *, show_password: bool) -> tuple[str, str | None]:
    """(the DSN to use, a note for stderr or None). The embedded server is not started."""
    db = config.database
    if db.dsn != EMBEDDED:
        return (db.dsn if show_password else masked_dsn(db.dsn)), None
    server = EmbeddedServer(db.data_dir, db.embedded)
    note = None
    if server.postmaster_pid() is None:
        note = "the embedded server is not running now (it runs while mdagent does)"
    return server.dsn(), note
