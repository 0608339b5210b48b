"""One summary log line every ``agent.summary_interval_s``: is the recorder keeping up?

``agent.summary`` carries, for the interval just ended: rows committed per
table and their rate (rows/s), the event-time-to-commit p99 (from the
writer's 1-in-16 sample of trades), dead letters stored, and the number of
open gaps in ``fetch_jobs`` now (None when the database does not answer).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from typing import Any

import structlog
import trio

from mdagent.db.connection import connect
from mdagent.errors import DatabaseUnavailable
from mdagent.pipeline.metrics import Metrics
from mdagent.pipeline.writer import Writer

log = structlog.get_logger("mdagent.summary")

TABLES = ("trades", "quotes", "candles", "trades_raw", "dead_letter", "fetch_jobs")


def p99(values: Sequence[float]) -> float | None:
    """The 99th percentile (nearest rank) of ``values``; None when empty.

    Only the top 1% is materialized (``heapq.nlargest``): the writer's sample
    holds up to 100,000 latencies as doubles, and a sorted copy made as many
    float objects (3.2 MB) once a minute, which lifted the agent's RSS by
    about that much at its first summary line.
    """
    n = len(values)
    if not n:
        return None
    rank = max(1, math.ceil(0.99 * n))  # 1-based, ascending
    return heapq.nlargest(n - rank + 1, values)[-1]


def open_gaps(dsn: str) -> int | None:
    """fetch_jobs waiting or running now; None when the database does not answer."""
    try:
        with connect(dsn, connect_timeout_s=2) as conn:
            row = conn.execute(
                "SELECT count(*) FROM fetch_jobs WHERE status IN ('pending', 'running')"
            ).fetchone()
    except DatabaseUnavailable:
        return None
    return int(row[0]) if row else 0


class Summary:
    """Counters at the last line; :meth:`line` gives the next line's fields."""

    def __init__(self, metrics: Metrics, writer: Writer) -> None:
        self.metrics = metrics
        self.writer = writer
        self._rows = self._rows_now()
        self._dead = self._dead_now()
        self._samples = writer.latency_samples
        self._at = trio.current_time()

    def _rows_now(self) -> dict[str, float]:
        get = self.metrics.registry.get_sample_value
        return {t: get("mdagent_rows_committed_total", {"table": t}) or 0.0 for t in TABLES}

    def _dead_now(self) -> float:
        total = 0.0
        for family in self.metrics.dead_letters.collect():
            total += sum(s.value for s in family.samples if s.name.endswith("_total"))
        return total

    def line(self, gaps: int | None) -> dict[str, Any]:
        """The fields of one ``agent.summary`` line, and a new interval begins."""
        now = trio.current_time()
        elapsed = max(now - self._at, 1e-9)
        rows = self._rows_now()
        committed = {t: int(rows[t] - self._rows[t]) for t in TABLES if rows[t] > self._rows[t]}
        new_samples = min(self.writer.latency_samples - self._samples, len(self.writer.latencies_s))
        window = self.writer.latencies_s[len(self.writer.latencies_s) - new_samples :]
        latency = p99(window)
        dead = self._dead_now()
        fields: dict[str, Any] = {
            "interval_s": round(elapsed, 1),
            "rows": committed,
            "rows_per_s": {t: round(n / elapsed, 1) for t, n in committed.items()},
            "commit_latency_p99_s": None if latency is None else round(latency, 4),
            "open_gaps": gaps,
            "dead_letters": int(dead - self._dead),
        }
        self._rows, self._dead, self._samples, self._at = (
            rows,
            dead,
            self.writer.latency_samples,
            now,
        )
        return fields


async def run_summary(summary: Summary, dsn: str, interval_s: Callable[[], float]) -> None:
    """Log ``agent.summary`` every ``interval_s()`` seconds (read each time: a reload
    may change it) until cancelled."""
    while True:
        await trio.sleep(interval_s())
        gaps = await trio.to_thread.run_sync(open_gaps, dsn)
        log.info("agent.summary", **summary.line(gaps))
