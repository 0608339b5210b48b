"""Opening connections: libpq errors become DatabaseUnavailable at this boundary."""

from __future__ import annotations

import psycopg

from mdagent.db.dsn import masked_dsn
from mdagent.errors import DatabaseUnavailable

APPLICATION_NAME = "mdagent"


def connect(
    dsn: str, *, autocommit: bool = False, connect_timeout_s: int = 5
) -> psycopg.Connection:
    """A sync connection (psycopg async is asyncio-only; trio callers use a thread)."""
    try:
        return psycopg.connect(
            dsn,
            autocommit=autocommit,
            connect_timeout=connect_timeout_s,
            application_name=APPLICATION_NAME,
        )
    except psycopg.OperationalError as exc:
        # libpq's message has a hint on a second line: one line for the log and CLI.
        reason = " ".join(str(exc).split())
        raise DatabaseUnavailable(f"cannot connect to {masked_dsn(dsn)}: {reason}") from exc
