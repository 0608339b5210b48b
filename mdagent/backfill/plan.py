"""``mdagent backfill`` arguments -> a plan of jobs (pure: no I/O).

Kinds map to the channel a job fills (the channel names of the stream, so a
backfilled row has the same natural key as a streamed one):

| kind            | binance        | polygon |
|-----------------|----------------|---------|
| trades          | trade          | T       |
| aggtrades       | aggTrade       | -       |
| quotes          | - (no history) | Q       |
| klines_<iv>     | kline_<iv>     | AM (1m), A (1s) |

``--from`` / ``--to`` are UTC dates (``2026-11-01``) or ISO times; the range
is ``[from, to)``, stored as inclusive ns bounds. It is cut into jobs of
``chunk_s`` seconds so that workers can run them concurrently.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Final

import attrs

from mdagent.db.jobs import PlannedJob
from mdagent.providers.binance.channels import BINANCE_KLINE_INTERVALS, BINANCE_KLINE_SECONDS
from mdagent.providers.registry import PROVIDERS
from mdagent.text import storable_text

NS_PER_S: Final = 1_000_000_000
_POLYGON_BARS: Final = {"1m": "AM", "1s": "A"}
# Default job length: an hour of trades or quotes keeps jobs short enough to
# spread over workers and to resume cheaply; a klines job is 1000 bars, one page.
TRADES_CHUNK_S: Final = 3600
KLINES_PER_JOB: Final = 1000
_MAX_CHUNK_S: Final = 100 * 366 * 86400
# A job shorter than a minute buys nothing (a page holds up to 1000 rows) and
# costs a request each; under 1 ns the cutting loop never ended.
_MIN_CHUNK_S: Final = 60
# The plan is a list in memory and a fetch_jobs row per job: a million (a
# year of minute jobs is 525,600; Binance 1s klines since 2017, 1000 bars a
# job, ~300,000) is more than any backfill needs.
MAX_JOBS: Final = 1_000_000


class PlanError(ValueError):
    """Bad ``mdagent backfill`` arguments; the message is the one-line error."""


@attrs.frozen
class Plan:
    provider: str
    symbol: str
    kind: str
    channel: str
    from_ns: int  # inclusive
    to_ns: int  # inclusive
    jobs: tuple[PlannedJob, ...]
    bar_s: int | None = None  # klines: bar length (None for 1M)
    cut_at_now: bool = False  # --to was in the future: the plan ends at now


def channel_for(provider: str, kind: str) -> str:
    """The channel a ``kind`` fills at ``provider``; PlanError when there is none."""
    if provider == "binance":
        if kind == "trades":
            return "trade"
        if kind == "aggtrades":
            return "aggTrade"
        if kind.startswith("klines_") and kind[7:] in BINANCE_KLINE_INTERVALS:
            return f"kline_{kind[7:]}"
        if kind == "quotes":
            raise PlanError("binance keeps no quote history (bookTicker has no REST history)")
    elif provider == "polygon":
        if kind == "trades":
            return "T"
        if kind == "quotes":
            return "Q"
        if kind.startswith("klines_") and kind[7:] in _POLYGON_BARS:
            return _POLYGON_BARS[kind[7:]]
        if kind == "aggtrades":
            raise PlanError(
                "polygon has no aggregate trades (kinds: trades, quotes, klines_1m, klines_1s)"
            )
    else:
        raise PlanError(f"unknown provider {provider!r} (binance or polygon)")
    raise PlanError(f"unknown kind {kind!r} for {provider}")


def parse_time(text: str, name: str) -> int:
    """``YYYY-MM-DD`` or an ISO 8601 time (UTC unless it says otherwise) -> ns since epoch."""
    try:
        if len(text) == 10:
            moment = dt.datetime.combine(dt.date.fromisoformat(text), dt.time(), dt.UTC)
        else:
            moment = dt.datetime.fromisoformat(text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=dt.UTC)
    except ValueError:
        raise PlanError(f"{name}: {text!r} is not a date (YYYY-MM-DD) or ISO time") from None
    seconds = moment.timestamp()
    if seconds < 0:
        raise PlanError(f"{name}: {text!r} is before 1970")
    return round(seconds * 1_000_000) * 1000


def make_plan(
    provider: str,
    symbol: str,
    kind: str,
    from_text: str,
    to_text: str,
    *,
    chunk_s: float | None = None,
    now_ns: int | None = None,
) -> Plan:
    """The jobs for one ``mdagent backfill`` run. Raises PlanError (one line) on bad input.

    ``now_ns`` (ns since epoch; None: no limit) ends the range at now when
    ``--to`` is later: a job over time that has not happened yet would end
    ``done`` with what exists so far, and a rerun would never read the rest.
    """
    channel = channel_for(provider, kind)
    if not symbol or not symbol.strip():
        raise PlanError("--symbol is empty")
    symbol = symbol.strip().upper() if provider == "binance" else symbol.strip()
    why = PROVIDERS[provider].symbols.problem(symbol)
    if why is not None:
        raise PlanError(f"--symbol {storable_text(symbol, 60)!r}: {why}")
    if symbol == "*":
        # A wildcard is a subscription, not an instrument: REST history is per ticker.
        raise PlanError("--symbol '*': backfill one ticker at a time")
    start = parse_time(from_text, "--from")
    end = parse_time(to_text, "--to")
    if end <= start:
        raise PlanError(f"--to ({to_text}) must be after --from ({from_text})")
    cut_at_now = now_ns is not None and end > now_ns
    if now_ns is not None and cut_at_now:
        if start >= now_ns:
            raise PlanError(f"--from ({from_text}) is in the future: there is no history yet")
        end = now_ns
    bar_s: int | None = None
    if channel.startswith("kline_"):
        bar_s = BINANCE_KLINE_SECONDS.get(channel[6:])
    elif channel in ("AM", "A"):
        bar_s = 60 if channel == "AM" else 1
    if chunk_s is None:
        chunk_s = KLINES_PER_JOB * bar_s if bar_s else TRADES_CHUNK_S
        if bar_s is None and channel.startswith("kline_"):
            chunk_s = 366 * 86400  # monthly bars: one job
    # Not finite (nan, inf) or beyond the epoch range: no job length to cut by.
    if not (0 < chunk_s <= _MAX_CHUNK_S):
        raise PlanError("--chunk-hours must be > 0 and at most 100 years")
    if chunk_s < _MIN_CHUNK_S:
        raise PlanError(f"--chunk-hours must be at least 1 minute ({_MIN_CHUNK_S / 3600:.4f})")
    step = int(chunk_s * NS_PER_S)
    count = -(-(end - start) // step)
    if count > MAX_JOBS:
        raise PlanError(
            f"the plan would be {count:,} jobs; backfill a shorter range or longer"
            f" jobs (--chunk-hours), at most {MAX_JOBS:,} jobs a run"
        )
    jobs = []
    lo = start
    while lo < end:
        hi = min(end, lo + step)
        jobs.append(PlannedJob(provider, symbol, channel, lo, hi - 1))
        lo = hi
    return Plan(provider, symbol, kind, channel, start, end - 1, tuple(jobs), bar_s, cut_at_now)


@attrs.frozen
class Estimate:
    """What a plan will cost. ``requests``/``weight`` are None when not known up front."""

    requests: int | None
    weight: int | None
    seconds: float | None
    note: str


def estimate_klines(plan: Plan, weight_per_request: int, limit: int, window_s: float) -> Estimate:
    """Klines are one page per 1000 bars: the cost is known exactly from the range."""
    assert plan.bar_s is not None
    requests = sum(
        max(1, math.ceil((j.to_ts_ns - j.from_ts_ns + 1) / (plan.bar_s * NS_PER_S * 1000)))
        for j in plan.jobs
    )
    weight = requests * weight_per_request
    return Estimate(requests, weight, _budget_seconds(weight, limit, window_s), "exact")


def estimate_by_count(
    plan: Plan, rows: int, per_page: int, weight_per_page: int, weight_per_job: int,
    limit: int | None, window_s: float,
) -> Estimate:  # fmt: skip
    """Trades by id: pages of ``per_page`` rows plus one lookup per job."""
    requests = math.ceil(rows / per_page) + len(plan.jobs)
    weight = math.ceil(rows / per_page) * weight_per_page + len(plan.jobs) * weight_per_job
    seconds = _budget_seconds(weight, limit, window_s) if limit else None
    return Estimate(requests, weight, seconds, f"{rows} rows in the range")


def _budget_seconds(weight: int, limit: int, window_s: float) -> float:
    """At least this long: whole windows of budget the weight needs beyond the first."""
    return max(0.0, (math.ceil(weight / limit) - 1) * window_s)
