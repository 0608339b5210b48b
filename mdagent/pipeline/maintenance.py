"""Housekeeping: day partitions ahead, retention."""

from __future__ import annotations

import datetime as dt

import psycopg
import structlog
import trio

from mdagent.config import DatabaseConfig
from mdagent.db.connection import connect
from mdagent.db.partitions import drop_older_than, ensure_days_ahead
from mdagent.errors import DatabaseUnavailable

log = structlog.get_logger("mdagent.maintenance")

MAINTENANCE_EVERY_S = 3600.0


def run_maintenance_once(
    dsn: str, config: DatabaseConfig, today: dt.date | None = None
) -> list[str]:
    today = today or dt.datetime.now(dt.UTC).date()
    with connect(dsn, autocommit=True) as conn:
        try:
            ensure_days_ahead(conn, today, config.partitions_ahead_days)
            dropped: list[str] = []
            if config.retention_days:
                dropped = drop_older_than(conn, today - dt.timedelta(days=config.retention_days))
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(str(exc)) from exc
    return dropped


async def run_maintenance(dsn: str, config: DatabaseConfig) -> None:
    while True:
        try:
            dropped = await trio.to_thread.run_sync(run_maintenance_once, dsn, config)
        except DatabaseUnavailable as exc:
            log.warning("maintenance.database_unavailable", error=str(exc))
            await trio.sleep(30)
            continue
        if dropped:
            log.info("maintenance.retention", dropped=dropped)
        await trio.sleep(MAINTENANCE_EVERY_S)
