"""Apply the SQL files of ``migrations/`` in order, once each.

Applied versions are recorded in ``schema_migrations``. A session-level
advisory lock serializes concurrent runs (two agents starting at once): the
second waits, then finds nothing left to apply. Each file runs in its own
transaction together with its ``schema_migrations`` row, so a failing file
leaves no trace and names itself in the error.
"""

from __future__ import annotations

import re
from importlib import resources

import attrs
import psycopg

from mdagent.db.connection import connect
from mdagent.errors import MigrationError, SchemaMissing

# Arbitrary but fixed: the advisory lock key that serializes migrators.
MIGRATION_LOCK_KEY = 0x6D646167_656E7401

_FILE_NAME = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")


@attrs.frozen
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("mdagent.migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version number: {sorted(versions)}")
    return found


def migrate(dsn: str) -> list[str]:
    """Apply pending migrations; return the names of the files applied now."""
    applied_now: list[str] = []
    with connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for migration in available_migrations():
                if migration.version in done:
                    continue
                _apply(conn, migration)
                applied_now.append(migration.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return applied_now


def require_schema(conn: psycopg.Connection) -> None:
    """Raise SchemaMissing unless ``conn``'s database has been migrated."""
    row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not row or not row[0]:
        raise SchemaMissing()


def _apply(conn: psycopg.Connection, migration: Migration) -> None:
    try:
        with conn.transaction():
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
    except psycopg.Error as exc:
        raise MigrationError(f"{migration.name}: {exc}") from exc
