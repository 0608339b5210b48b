"""Reference B: plain psycopg binary COPY of the captured rows."""

from __future__ import annotations

import time
from collections.abc import Sequence

import attrs
import psycopg

from mdagent.testing.kit import BenchError, Captured, TableRow, kit_for

_TRADE_COLUMNS = (
    "provider", "symbol", "channel", "trade_id", "ts", "ts_ns", "seq", "price", "size",
    "is_buyer_maker", "exchange", "tape", "conditions", "trf_id", "first_trade_id",
    "last_trade_id", "correction", "received_at",
)  # fmt: skip
_TRADE_TYPES = (
    "text", "text", "text", "text", "timestamptz", "int8", "int8", "numeric", "numeric",
    "bool", "int4", "int2", "int4[]", "int4", "int8", "int8", "int4", "timestamptz",
)  # fmt: skip
_QUOTE_COLUMNS = (
    "provider", "symbol", "channel", "seq", "ts", "ts_ns", "bid_price", "bid_size",
    "ask_price", "ask_size", "bid_exchange", "ask_exchange", "conditions", "indicators",
    "tape", "received_at",
)  # fmt: skip
_QUOTE_TYPES = (
    "text", "text", "text", "int8", "timestamptz", "int8", "numeric", "numeric",
    "numeric", "numeric", "int4", "int4", "int4[]", "int4[]", "int2", "timestamptz",
)  # fmt: skip


@attrs.define
class CopyReference:
    rows: int
    seconds: float
    skipped_events: int
    batch_rows: int

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def run_copy_reference(
    dsn: str, provider: str, captured: Sequence[Captured], batch_rows: int
) -> CopyReference:
    rows: list[TableRow]
    rows, skipped = kit_for(provider).bench.reference_rows(captured)
    if not rows:
        raise BenchError("reference B has no rows to copy")
    batches = []
    for i in range(0, len(rows), batch_rows):
        chunk = rows[i : i + batch_rows]
        batches.append(
            ([r for t, r in chunk if t == "trades"], [r for t, r in chunk if t == "quotes"])
        )
    days = {r[4].date() for _t, r in rows} | {r[-1].date() for _t, r in rows}
    trades_sql = f"COPY trades ({', '.join(_TRADE_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
    quotes_sql = f"COPY quotes ({', '.join(_QUOTE_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
    with psycopg.connect(dsn) as conn:
        for table in ("trades", "quotes"):
            for day in days:  # partitions exist up front, as maintenance makes them
                conn.execute("SELECT mdagent_ensure_day_partition(%s::regclass, %s)", (table, day))
        conn.commit()
        started = time.perf_counter()
        for trades, quotes in batches:
            with conn.cursor() as cur:
                for sql, types, data in (
                    (trades_sql, _TRADE_TYPES, trades),
                    (quotes_sql, _QUOTE_TYPES, quotes),
                ):
                    if not data:
                        continue
                    with cur.copy(sql) as copy:
                        copy.set_types(list(types))
                        for row in data:
                            copy.write_row(row)
            conn.commit()
        seconds = time.perf_counter() - started
    return CopyReference(len(rows), seconds, skipped, batch_rows)
