"""Polygon trading sessions: New York dates, never UTC dates (wire-formats.md 2.7).

Sequence numbers (``q``) and day statistics restart per trading session, and
sessions follow America/New_York: in EST, 19:30 ET Monday is already Tuesday
00:30 UTC, the same UTC day as Tuesday's 04:00 ET pre-market. Nothing in
mdagent compares ``q`` across sessions any more (dedup is by natural key); the
session calendar is what the fake venue uses to reset ``q`` like the real one.
"""

from __future__ import annotations

import datetime as dt
from typing import Final
from zoneinfo import ZoneInfo

__all__ = ["NEW_YORK", "session_bounds_ns", "session_date"]

NEW_YORK: Final = ZoneInfo("America/New_York")
_NS: Final = 1_000_000_000


def session_date(ts_ns: int) -> dt.date:
    """The New York date of a Unix time in ns (the session a record belongs to)."""
    return dt.datetime.fromtimestamp(ts_ns / _NS, NEW_YORK).date()


def session_bounds_ns(ts_ns: int) -> tuple[int, int]:
    """[start, end) in Unix ns of the New York day holding ``ts_ns`` (23, 24 or 25 hours)."""
    day = session_date(ts_ns)
    start = dt.datetime.combine(day, dt.time(), NEW_YORK)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), NEW_YORK)
    return int(start.timestamp()) * _NS, int(end.timestamp()) * _NS
