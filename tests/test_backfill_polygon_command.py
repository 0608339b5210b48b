"""``mdagent backfill --provider polygon`` as a user runs it: the console script in its
own process, the fake Polygon (REST over real sockets, with faults) in this one, a real
PostgreSQL."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import trio

from mdagent.testing.polygon.marketgen import SteppingClock, WsEvent
from mdagent.testing.polygon.venue import FakePolygon, PolygonFaults
from tests.agent_support import query

KEY_ENV = "MDAGENT_TEST_BACKFILL_POLYGON_KEY"
KEY = "backfill-key"
# 2026-11-03 from 14:30 UTC (the New York open), a trade or quote every ~7.6 ms.
DAY = dt.datetime(2026, 11, 3, tzinfo=dt.UTC)
OPEN_NS = int((DAY + dt.timedelta(hours=14, minutes=30)).timestamp()) * 1_000_000_000
STEPS = 12_000


def past_day_venue(faults: PolygonFaults | None = None) -> FakePolygon:
    """A venue whose AAPL history holds STEPS trades and quotes of that morning,
    served in pages of at most 1,000 (so an hour takes several, by next_url)."""
    venue = FakePolygon(
        symbols=["AAPL"],
        api_key=KEY,
        seed=9,
        clock_ns=SteppingClock(OPEN_NS),
        faults=faults,
        rest_page_max=1000,
    )
    events: list[WsEvent] = []
    venue.stock_market.run(events, STEPS)
    venue.stall(3600)  # nothing streams; only REST is used
    return venue


def write_config(path: Path, dsn: str, rest_url: str) -> Path:
    path.write_text(
        f'[database]\ndsn = "{dsn}"\n'
        '[[sources]]\nprovider = "polygon"\nsymbols = ["AAPL"]\nchannels = ["T", "Q"]\n'
        f'ws_url = "ws://127.0.0.1:9/stocks"\nrest_url = "{rest_url}"\n'
        f'api_key_env = "{KEY_ENV}"\n'
    )
    return path


async def backfill(
    cfg: Path, kind: str, symbol: str = "AAPL"
) -> subprocess.CompletedProcess[bytes]:
    cmd = [
        sys.executable, "-m", "mdagent", "backfill", "--config", str(cfg),
        "--provider", "polygon", "--symbol", symbol, "--kind", kind,
        "--from", "2026-11-03T14:00", "--to", "2026-11-03T17:00",
    ]  # fmt: skip
    env = {**os.environ, KEY_ENV: KEY}
    return await trio.run_process(
        cmd,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=env,
    )


async def test_trades_and_quotes_backfilled_exactly_with_faults(
    fresh_db_dsn: str, tmp_path: Path
) -> None:
    """Trades and quotes of three hours through 500s and truncated pages: every one
    the venue has, once, with ns timestamps; a rerun adds nothing."""
    dsn = fresh_db_dsn
    venue = past_day_venue(PolygonFaults(rest_500_every=3, rest_truncate_every=5))
    market = venue.market("AAPL")
    assert len(market.trades) > 1000 and len(market.quotes) > 1000
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            _ws, rest_url = await nursery.start(venue.serve)
            cfg = write_config(tmp_path / "config.toml", dsn, rest_url)
            trades = await backfill(cfg, "trades")
            quotes = await backfill(cfg, "quotes")
            again = await backfill(cfg, "trades")
            nursery.cancel_scope.cancel()
    for result in (trades, quotes, again):
        assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    stored_trades = query(
        dsn,
        "SELECT trade_id, ts_ns FROM trades WHERE provider = 'polygon' AND symbol = 'AAPL'"
        " ORDER BY ts_ns, trade_id",
    )
    expected = sorted((t.natural_id, t.sip_ns) for t in market.trades)
    assert sorted(stored_trades) == expected
    stored_quotes = query(
        dsn,
        "SELECT seq, ts_ns FROM quotes WHERE provider = 'polygon' AND symbol = 'AAPL'",
    )
    assert sorted(stored_quotes) == sorted((q.seq, q.sip_ns) for q in market.quotes)
    assert venue.counters["rest_500"] > 0 and venue.counters["rest_truncated"] > 0
    # Paged: far more requests than the 3 hour-jobs of each kind.
    assert venue.counters["rest_served"] > 3 * (len(market.trades) // 1000)


async def test_quotes_not_in_the_plan_are_unrecoverable(fresh_db_dsn: str, tmp_path: Path) -> None:
    """A 403 NOT_AUTHORIZED (the plan does not include the data, wire-formats.md 2.6):
    the jobs end ``unrecoverable`` with the venue's message, exit 1 listing them."""
    dsn = fresh_db_dsn
    venue = past_day_venue(PolygonFaults(rest_not_entitled=("quotes",)))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            _ws, rest_url = await nursery.start(venue.serve)
            cfg = write_config(tmp_path / "config.toml", dsn, rest_url)
            result = await backfill(cfg, "quotes")
            nursery.cancel_scope.cancel()
    out = result.stdout.decode()
    assert result.returncode == 1, out + result.stderr.decode()
    states = query(dsn, "SELECT status, count(*), min(error) FROM fetch_jobs GROUP BY 1")
    assert [(s, n) for s, n, _e in states] == [("unrecoverable", 3)]
    assert "not entitled to this data" in states[0][2]
    assert "unrecoverable" in out
    assert venue.counters["rest_403"] == 3
    assert query(dsn, "SELECT count(*) FROM quotes") == [(0,)]


async def test_unknown_ticker_is_refused_and_a_delisted_one_is_backfilled(
    fresh_db_dsn: str, tmp_path: Path
) -> None:
    """Found by QA: a ticker Polygon does not know (or a wrong case: tickers are
    case-sensitive) got jobs that ended "done" with no rows, exit 0. It is an
    argument error now, before any job is stored; a delisted ticker still has
    history and is backfilled."""
    venue = past_day_venue(PolygonFaults(delisted=("AAPL",)))
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            _ws, rest_url = await nursery.start(venue.serve)
            cfg = write_config(tmp_path / "config.toml", fresh_db_dsn, rest_url)
            unknown = await backfill(cfg, "trades", symbol="aapl")
            jobs_after_unknown = query(fresh_db_dsn, "SELECT count(*) FROM fetch_jobs")
            delisted = await backfill(cfg, "trades")
            nursery.cancel_scope.cancel()
    err = unknown.stderr.decode()
    assert unknown.returncode == 2, unknown.stdout.decode() + err
    assert "polygon does not list 'aapl'" in err and len(err.strip().splitlines()) == 1, err
    assert jobs_after_unknown == [(0,)]
    assert delisted.returncode == 0, delisted.stdout.decode() + delisted.stderr.decode()
    stored = query(fresh_db_dsn, "SELECT count(*) FROM trades WHERE symbol = 'AAPL'")
    assert stored == [(len(venue.market("AAPL").trades),)]
