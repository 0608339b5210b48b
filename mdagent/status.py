"""`mdagent status`: streams, offsets, gaps and the backfill queue, from the database."""

from __future__ import annotations

import datetime as dt

from mdagent.config import Config
from mdagent.db.connection import connect
from mdagent.db.embedded import database_dsn
from mdagent.db.migrate import require_schema


def _fmt_ns(ts_ns: int | None) -> str:
    if ts_ns is None:
        return "-"
    return dt.datetime.fromtimestamp(ts_ns / 1e9, dt.UTC).isoformat(timespec="milliseconds")


def print_status(config: Config) -> int:
    db = config.database
    with database_dsn(db.dsn, db.data_dir, db.embedded) as dsn, connect(dsn) as conn:
        require_schema(conn)
        offsets = conn.execute(
            "SELECT provider, symbol, channel, last_seq, last_ts_ns,"
            " extract(epoch FROM now() - updated_at) FROM stream_offsets ORDER BY 1, 2, 3"
        ).fetchall()
        jobs = conn.execute(
            "SELECT status, count(*) FROM fetch_jobs GROUP BY status ORDER BY status"
        ).fetchall()
        gaps = conn.execute(
            "SELECT provider, symbol, channel, reason, from_seq, to_seq, from_ts_ns, to_ts_ns"
            " FROM fetch_jobs WHERE status IN ('pending', 'running', 'failed') ORDER BY id DESC LIMIT 20"
        ).fetchall()
        dead = conn.execute("SELECT count(*) FROM dead_letter").fetchone()
    print("streams (stream_offsets):")
    print(
        f"  {'provider':<9} {'symbol':<12} {'channel':<11} {'last_seq':>14} {'last event (UTC)':<30} {'committed ago':>13}"
    )
    for provider, symbol, channel, seq, ts_ns, ago in offsets:
        print(
            f"  {provider:<9} {symbol:<12} {channel:<11} {seq if seq is not None else '-':>14} "
            f"{_fmt_ns(ts_ns):<30} {float(ago):>12.1f}s"
        )
    print("backfill queue (fetch_jobs): " + (", ".join(f"{s}={n}" for s, n in jobs) or "empty"))
    for provider, symbol, channel, reason, fs, ts, fts, tts in gaps:
        rng = f"ids {fs}..{ts}" if fs is not None else f"{_fmt_ns(fts)} .. {_fmt_ns(tts)}"
        print(f"  gap {provider}:{symbol}:{channel} {reason}: {rng}")
    print(f"dead letters: {dead[0] if dead else 0}")
    return 0
