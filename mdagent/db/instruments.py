"""The ``instruments`` table: one row per (provider, symbol) the venue lists.

Written by the instruments sync (``pipeline/instruments.py``) from each
provider's listing; read by ``mdagent status`` to check configured symbols.
Rows are upserted, never deleted: an instrument the venue stops listing
keeps its last known row (its ``updated_at`` tells when it was last seen).
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from mdagent.providers.base import Instrument

UPSERT = (
    "INSERT INTO instruments AS i (provider, symbol, base_asset, quote_asset, status, active,"
    " tick_size, lot_size, name, market, type, raw)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)"
    " ON CONFLICT (provider, symbol) DO UPDATE SET"
    " base_asset = excluded.base_asset, quote_asset = excluded.quote_asset,"
    " status = excluded.status, active = excluded.active,"
    " tick_size = excluded.tick_size, lot_size = excluded.lot_size,"
    " name = excluded.name, market = excluded.market, type = excluded.type,"
    " raw = excluded.raw, updated_at = now()"
)


def store_instruments(
    conn: psycopg.Connection, provider: str, instruments: Sequence[Instrument]
) -> int:
    """Upsert ``instruments`` of ``provider`` in one transaction; the rows written.

    A symbol listed twice keeps its last entry. Raises psycopg errors.
    """
    latest = {i.symbol: i for i in instruments}
    rows = [
        (
            provider,
            i.symbol,
            i.base_asset,
            i.quote_asset,
            i.status,
            i.active,
            i.tick_size,
            i.lot_size,
            i.name,
            i.market,
            i.type,
            i.raw.decode("utf-8", "replace"),
        )
        for i in latest.values()
    ]
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(UPSERT, rows)
    return len(rows)


def listed_symbols(conn: psycopg.Connection, provider: str) -> dict[str, tuple[str, bool]]:
    """``{symbol: (status, active)}`` of every stored instrument of ``provider``."""
    rows = conn.execute(
        "SELECT symbol, coalesce(status, ''), coalesce(active, false) FROM instruments"
        " WHERE provider = %s",
        (provider,),
    ).fetchall()
    return {symbol: (status, active) for symbol, status, active in rows}
