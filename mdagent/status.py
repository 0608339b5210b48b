"""`mdagent status`: what is recorded and what is missing, from the database and the agent.

:func:`collect_status` gathers plain data (the ``--json`` output);
``status_view.py`` draws it as tables. The database part never scans a big
table: a table with more than EXACT_COUNT_MAX rows (planner estimate) is
shown with its estimated row count and its stored range to the day, from
its non-empty day partitions. The agent part comes from the running
agent's ``/metrics`` (two scrapes one second apart give events/s) when
``http.listen`` answers.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Any

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from mdagent.config import Config
from mdagent.db.connection import connect
from mdagent.db.embedded import database_dsn
from mdagent.db.instruments import listed_symbols
from mdagent.db.jobs import counts_by_state
from mdagent.db.migrate import require_schema
from mdagent.pipeline.instruments import symbol_problems
from mdagent.providers.registry import provider_for

EXACT_COUNT_MAX = 1_000_000
# (table, time column) of the recorded data.
DATA_TABLES = (
    ("trades", "ts"),
    ("quotes", "ts"),
    ("candles", "ts"),
    ("trades_raw", "received_at"),
)
SCRAPE_TIMEOUT_S = 1.0
RATE_WINDOW_S = 1.0
_PARTITION_DAY = re.compile(r"_p(\d{8})$")


def collect_status(config: Config, *, rate_window_s: float = RATE_WINDOW_S) -> dict[str, Any]:
    """Everything ``mdagent status`` shows, as JSON-ready data.

    Keys: ``agent`` (None when not reachable, ``agent_note`` then saying why
    when another service answers on its port; else ``url``, ``streams`` per
    source: source, connected, last_event_age_s, events_per_s, frames_total;
    and ``per_stream`` per (provider, symbol, channel), as ``/readyz`` lists
    them: state, last_event_age_s, last_receive_age_s, events_per_s, ...; and
    ``problems``, ``/readyz``'s),
    ``offsets``, ``tables``, ``gaps``, ``queue`` (jobs per state), ``not_filled``
    (the newest failed / unrecoverable jobs with their reason), ``dead_letters``,
    ``instruments`` (one line per configured symbol the stored listing of its
    venue does not have or shows as not trading; venues never synced are skipped).
    Times are ISO 8601 UTC strings, ages seconds. Raises SchemaMissing,
    DatabaseUnavailable.
    """
    db = config.database
    with database_dsn(db.dsn, db.data_dir, db.embedded) as dsn, connect(dsn) as conn:
        require_schema(conn)
        data: dict[str, Any] = {
            "offsets": _offsets(conn),
            "tables": [_table(conn, name, column) for name, column in DATA_TABLES],
            "gaps": _gaps(conn),
            "queue": _queue(conn),
            "not_filled": _not_filled(conn),
            "dead_letters": _dead_letters(conn),
            "instruments": _instrument_problems(conn, config),
        }
    agent = _agent(config, rate_window_s) if config.http.enabled else None
    data["agent"] = agent if not isinstance(agent, str) else None
    data["agent_note"] = agent if isinstance(agent, str) else None
    return data


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds") if value else None


def _iso_ns(ts_ns: int | None) -> str | None:
    if ts_ns is None:
        return None
    return _iso(dt.datetime.fromtimestamp(ts_ns / 1e9, dt.UTC))


def _offsets(conn: psycopg.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT provider, symbol, channel, last_seq, last_ts_ns,"
        " extract(epoch FROM now() - updated_at)::float8 FROM stream_offsets ORDER BY 1, 2, 3"
    ).fetchall()
    return [
        {
            "provider": provider,
            "symbol": symbol,
            "channel": channel,
            "last_seq": seq,
            "last_event": _iso_ns(ts_ns),
            "committed_ago_s": round(ago, 1),
        }
        for provider, symbol, channel, seq, ts_ns, ago in rows
    ]


def _table(conn: psycopg.Connection, table: str, column: str) -> dict[str, Any]:
    parts = conn.execute(
        "SELECT c.relname, greatest(c.reltuples, 0)::float8 FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass"
        " ORDER BY c.relname",
        (table,),
    ).fetchall()
    estimate = int(sum(tuples for _, tuples in parts))
    if estimate <= EXACT_COUNT_MAX:
        # Small (or never analyzed): exact figures are cheap enough.
        count, first, last = conn.execute(
            f"SELECT count(*), min({column}), max({column}) FROM {table}"
        ).fetchone() or (0, None, None)
        if count <= EXACT_COUNT_MAX:
            return {
                "table": table,
                "rows": count,
                "exact": True,
                "from": _iso(first),
                "to": _iso(last),
            }
        estimate = count
    days = [m.group(1) for name, _ in parts if (m := _PARTITION_DAY.search(name))]
    non_empty = [
        d
        for d in days
        if conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table}_p{d})").fetchone() == (True,)
    ]
    return {
        "table": table,
        "rows": estimate,
        "exact": False,
        "from": f"{non_empty[0][:4]}-{non_empty[0][4:6]}-{non_empty[0][6:]}" if non_empty else None,
        "to": f"{non_empty[-1][:4]}-{non_empty[-1][4:6]}-{non_empty[-1][6:]}"
        if non_empty
        else None,
    }


def _gaps(conn: psycopg.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT kind, reason, count(*), extract(epoch FROM now() - min(created_at))::float8"
        " FROM fetch_jobs WHERE status IN ('pending', 'running', 'failed')"
        " GROUP BY kind, reason ORDER BY kind, reason"
    ).fetchall()
    return [
        {"kind": kind, "reason": reason, "open": n, "oldest_age_s": round(age, 1)}
        for kind, reason, n, age in rows
    ]


def _queue(conn: psycopg.Connection) -> dict[str, int]:
    """Jobs per state, every state (``absent``: id ranges REST proved never existed)."""
    return counts_by_state(conn)


def _not_filled(conn: psycopg.Connection, limit: int = 10) -> list[dict[str, Any]]:
    """The newest jobs that ended without their data: ``failed`` (with the venue's
    reason) and ``unrecoverable`` (no REST history): never hidden."""
    rows = conn.execute(
        "SELECT id, provider, symbol, channel, status, attempts, error, from_seq, to_seq,"
        " from_ts_ns, to_ts_ns FROM fetch_jobs WHERE status IN ('failed', 'unrecoverable')"
        " ORDER BY id DESC LIMIT %s",
        (limit,),
    ).fetchall()
    return [
        {
            "id": job_id,
            "stream": f"{provider}:{symbol}:{channel}",
            "status": state,
            "attempts": attempts,
            "error": error,
            "range": f"ids {lo}..{hi}"
            if lo is not None
            else f"{_iso_ns(lo_ns)} .. {_iso_ns(hi_ns)}",
        }
        for job_id, provider, symbol, channel, state, attempts, error, lo, hi, lo_ns, hi_ns in rows
    ]


def _instrument_problems(conn: psycopg.Connection, config: Config) -> list[str]:
    found: list[str] = []
    listings: dict[str, dict[str, tuple[str, bool]]] = {}
    for source in config.sources:
        if not source.instruments:
            continue
        if source.provider not in listings:
            listings[source.provider] = listed_symbols(conn, source.provider)
        listed = listings[source.provider]
        if listed:
            problems = symbol_problems(provider_for(source.provider), source.symbols, listed)
            found.extend(p.text for p in problems if p.text not in found)
    return found


def _dead_letters(conn: psycopg.Connection) -> dict[str, int]:
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE received_at > now() - interval '1 hour'), count(*)"
        " FROM dead_letter"
    ).fetchone()
    last_hour, total = row if row else (0, 0)
    return {"last_hour": last_hour, "total": total}


class _NotAnAgent(Exception):
    """Something answers on the agent's port, but not mdagent's /metrics."""


def _scrape(url: str) -> dict[tuple[str, str], float]:
    """(metric sample name, source label) -> value, for the per-source stream metrics.

    Raises httpx.HTTPError (nothing answers), _NotAnAgent (another service does).
    """
    response = httpx.get(url, timeout=SCRAPE_TIMEOUT_S)
    if response.status_code != 200:
        raise _NotAnAgent(f"{url} is not mdagent (HTTP {response.status_code})")
    samples: dict[tuple[str, str], float] = {}
    try:
        for family in text_string_to_metric_families(response.text):
            if (
                not family.name.startswith("mdagent_stream")
                and family.name != "mdagent_frames_received"
            ):
                continue
            for sample in family.samples:
                if "source" in sample.labels and "kind" not in sample.labels:
                    samples[(sample.name, sample.labels["source"])] = sample.value
    except ValueError as exc:  # prometheus_client's parser on text that is not metrics
        raise _NotAnAgent(f"{url} is not mdagent (no Prometheus metrics)") from exc
    return samples


def _agent(config: Config, rate_window_s: float) -> dict[str, Any] | str | None:
    """The agent's part of the status; None when nothing answers, a note when
    another service answers on its port."""
    host = config.http.host
    # Every address: ask loopback of the same family ("::" is IPv6 only, as
    # trio listens with IPV6_V6ONLY; "" listens on both).
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    url = f"http://{host if ':' not in host else f'[{host}]'}:{config.http.port}/metrics"
    try:
        first = _scrape(url)
        started = time.monotonic()
        time.sleep(rate_window_s)
        second = _scrape(url)
        elapsed = time.monotonic() - started
        readyz = _readyz(url.removesuffix("/metrics") + "/readyz")
    except httpx.HTTPError:
        return None
    except _NotAnAgent as exc:
        return str(exc)
    now = time.time()
    streams = []
    for source in sorted({src for _, src in second}):
        frames = second.get(("mdagent_frames_received_total", source), 0.0)
        before = first.get(("mdagent_frames_received_total", source), frames)
        last = second.get(("mdagent_stream_last_frame_timestamp_seconds", source))
        streams.append(
            {
                "source": source,
                "connected": second.get(("mdagent_stream_connected", source)) == 1.0,
                "last_event_age_s": round(now - last, 1) if last else None,
                "events_per_s": round((frames - before) / elapsed, 1),
                "frames_total": int(frames),
            }
        )
    return {
        "url": url,
        "streams": streams,
        "per_stream": readyz.get("streams", []),
        "problems": readyz.get("problems", []),
    }


def _readyz(url: str) -> dict[str, Any]:
    """``/readyz``'s JSON (its body is JSON whether ready or not); {} if it is not JSON."""
    try:
        body = httpx.get(url, timeout=SCRAPE_TIMEOUT_S).json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
