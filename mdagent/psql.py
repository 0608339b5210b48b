"""`mdagent psql` and `mdagent dsn`: the configured database, embedded or not, by hand.

psql is the one in the PostgreSQL wheel, so nothing else needs installing.
A password never goes on psql's command line (visible in ``ps``): it is
handed over in ``PGPASSWORD``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

from psycopg import conninfo

from mdagent import interrupts
from mdagent.config import Config
from mdagent.db.dsn import EMBEDDED, masked_dsn
from mdagent.db.embedded import EmbeddedServer, bin_dir, database_dsn


def run_psql(config: Config, sql: str | Sequence[str] | None) -> int:
    """psql on the configured database (``-c sql`` for each one given, in order); psql's exit code."""
    db = config.database
    with database_dsn(db.dsn, db.data_dir, db.embedded) as dsn:
        params = conninfo.conninfo_to_dict(dsn)
        env = dict(os.environ)
        password = params.pop("password", None)
        if password is not None:
            env["PGPASSWORD"] = str(password)
        args = [str(bin_dir() / "psql"), conninfo.make_conninfo("", **params)]
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
