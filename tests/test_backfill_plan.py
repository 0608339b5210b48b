"""`mdagent backfill` plans: kinds, ranges, chunks (pure, no I/O)."""

from __future__ import annotations

import pytest

from mdagent.backfill.binance import used_weight_header
from mdagent.backfill.plan import PlanError, make_plan

DAY_NS = 86_400 * 10**9
NOV_1 = 1_793_491_200 * 10**9  # 2026-11-01T00:00Z


def test_a_day_of_trades_is_24_hour_jobs_covering_it_exactly() -> None:
    plan = make_plan("binance", "btcusdt", "trades", "2026-11-01", "2026-11-02")
    assert (plan.symbol, plan.channel) == ("BTCUSDT", "trade")
    assert len(plan.jobs) == 24
    assert plan.jobs[0].from_ts_ns == NOV_1 and plan.jobs[-1].to_ts_ns == NOV_1 + DAY_NS - 1
    for a, b in zip(plan.jobs, plan.jobs[1:], strict=False):
        assert b.from_ts_ns == a.to_ts_ns + 1  # no overlap, no hole


@pytest.mark.parametrize(
    ("provider", "kind", "channel", "jobs"),
    [
        ("binance", "klines_1m", "kline_1m", 2),  # 1440 bars, 1000 per job
        ("binance", "aggtrades", "aggTrade", 24),
        ("polygon", "quotes", "Q", 24),
        ("polygon", "klines_1s", "A", 87),  # 86,400 bars, 1000 per job
    ],
)
def test_kinds_map_to_stream_channels(provider: str, kind: str, channel: str, jobs: int) -> None:
    plan = make_plan(
        provider, "AAPL" if provider == "polygon" else "ETHUSDT", kind, "2026-11-01", "2026-11-02"
    )
    assert (plan.channel, len(plan.jobs)) == (channel, jobs)


def test_polygon_tickers_keep_their_case_and_times_may_be_iso() -> None:
    plan = make_plan("polygon", "BRK.A", "trades", "2026-11-03T14:30", "2026-11-03T15:30+00:00")
    assert plan.symbol == "BRK.A" and len(plan.jobs) == 1
    assert plan.to_ns - plan.from_ns == 3600 * 10**9 - 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("binance", "BTCUSDT", "quotes", "2026-11-01", "2026-11-02"), "no quote history"),
        (("polygon", "AAPL", "aggtrades", "2026-11-01", "2026-11-02"), "no aggregate trades"),
        (("binance", "BTCUSDT", "klines_2m", "2026-11-01", "2026-11-02"), "unknown kind"),
        (("binance", " ", "trades", "2026-11-01", "2026-11-02"), "--symbol is empty"),
        (("binance", "BTCUSDT", "trades", "2026-11-02", "2026-11-01"), "must be after"),
        (("binance", "BTCUSDT", "trades", "yesterday", "2026-11-01"), "is not a date"),
        (("binance", "BTCUSDT", "trades", "1969-12-31", "2026-11-01"), "before 1970"),
    ],
)
def test_bad_arguments_are_one_line_plan_errors(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(PlanError, match=message) as caught:
        make_plan(*args)
    assert "\n" not in str(caught.value)


def test_a_huge_symbol_is_named_not_echoed_whole() -> None:
    """A 10,000-character ``--symbol`` was echoed whole: one line of 10 KB."""
    with pytest.raises(PlanError, match="expected 1 to 40 characters, got 10000") as caught:
        make_plan("binance", "A" * 10_000, "trades", "2026-11-01", "2026-11-02")
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize(
    ("chunk_s", "start", "end", "message"),
    [
        # Under 1 ns: the step was 0 and the plan loop never ended, growing
        # its job list until the machine ran out of memory (--chunk-hours 1e-13).
        (3.6e-10, "2026-11-30T09:00", "2026-11-30T09:01", "--chunk-hours must be at least"),
        # A job per millisecond: 60,000 requests for one minute of trades.
        (0.001, "2026-11-30T09:00", "2026-11-30T09:01", "--chunk-hours must be at least"),
        # Allowed lengths, but more jobs than any backfill needs (and memory
        # and fetch_jobs rows for each): a shorter range or longer jobs.
        (60.0, "1970-01-01", "2026-11-01", "jobs; backfill a shorter range"),
    ],
)
def test_job_length_and_count_are_bounded(
    chunk_s: float, start: str, end: str, message: str
) -> None:
    with pytest.raises(PlanError, match=message) as caught:
        make_plan("binance", "BTCUSDT", "trades", start, end, chunk_s=chunk_s)
    assert "\n" not in str(caught.value)


def test_one_minute_jobs_are_allowed() -> None:
    plan = make_plan(
        "binance", "BTCUSDT", "trades", "2026-11-30T09:00", "2026-11-30T10:00", chunk_s=60.0
    )
    assert len(plan.jobs) == 60


def test_used_weight_header_names_follow_the_window() -> None:
    assert used_weight_header(60) == "x-mbx-used-weight-1m"
    assert used_weight_header(2) == "x-mbx-used-weight-2s"
    assert used_weight_header(86_400) == "x-mbx-used-weight-1d"
