"""Instruments sync end to end: the agent against the fake venues and a real PostgreSQL.

Each venue's listing lands in ``instruments`` with exact decimals; a configured
symbol the venue does not list is one error line (provider, symbol, nearest
listed spellings) and a /readyz problem; a symbol listed as not trading is
reported too; the sync runs again every ``agent.instruments_every_s`` and a
failed pass is retried without harming the agent.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import attrs
import httpx
import pytest
import trio
from structlog.testing import capture_logs

from mdagent.config import AgentConfig, Config, HttpConfig
from mdagent.pipeline.agent import Agent
from mdagent.status import collect_status
from mdagent.testing.binance.marketgen import format_units
from mdagent.testing.binance.venue import BinanceFaults, FakeBinance
from mdagent.testing.polygon.venue import FakePolygon
from tests.agent_support import (
    aquery,
    binance_source,
    make_config,
    polygon_source,
    query,
    running_agent,
    wait_until,
)

KEY_ENV = "MDAGENT_TEST_INSTRUMENTS_KEY"
KEY = "instruments-key"


def synced(agent: Agent, provider: str) -> int:
    """Successful instruments passes of ``provider`` so far."""
    return agent.instruments.passes.get(provider, 0) if agent.instruments is not None else 0


def with_http(config: Config, every_s: float = 0.3) -> Config:
    return attrs.evolve(
        config,
        http=HttpConfig(listen="127.0.0.1:0"),
        agent=AgentConfig(instruments_every_s=every_s),
    )


async def readyz_problems(port: int | None) -> tuple[int, list[str]]:
    async with httpx.AsyncClient(timeout=30) as client:
        reply = await client.get(f"http://127.0.0.1:{port}/readyz")
    return reply.status_code, reply.json()["problems"]


async def instrument_rows(dsn: str, provider: str) -> dict[str, tuple[object, ...]]:
    rows = await aquery(
        dsn,
        "SELECT symbol, base_asset, quote_asset, status, active, tick_size, lot_size,"
        " name, market, type, raw->>'symbol', raw->>'ticker' FROM instruments"
        " WHERE provider = %s",
        provider,
    )
    return {r[0]: r[1:] for r in rows}


async def test_binance_listing_stored_typo_and_halt_reported_and_refreshed(
    fresh_db_dsn: str,
) -> None:
    dsn = fresh_db_dsn
    venue = FakeBinance(symbols=["BTCUSDT", "ETHUSDT"], seed=5, events_per_s=50)
    with trio.fail_after(60), capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            ws_url, rest_url = await nursery.start(venue.serve)
            source = binance_source(
                ws_url, ["btcusdt", "ETHUSDT", "BTCUSTD"], ["trade"], rest_url=rest_url
            )
            config = with_http(make_config([source]))
            async with running_agent(config, dsn) as agent:
                assert agent.instruments is not None
                await wait_until(lambda: synced(agent, "binance") >= 1)
                rows = await instrument_rows(dsn, "binance")
                assert set(rows) == {"BTCUSDT", "ETHUSDT"}
                for symbol in rows:
                    spec = venue.market(symbol).spec
                    base, quote, status, active, tick, lot, *_rest, raw_symbol, _ = rows[symbol]
                    assert (base, quote, status, active, raw_symbol) == (
                        spec.base_asset, spec.quote_asset, "TRADING", True, symbol
                    )  # fmt: skip
                    # Exact decimals, the venue's text to the last digit.
                    assert tick == Decimal(format_units(spec.tick))
                    assert lot == Decimal(format_units(spec.step))
                    assert isinstance(tick, Decimal) and isinstance(lot, Decimal)

                # The typo: a /readyz problem naming it and its nearest spelling.
                status, problems = await readyz_problems(agent.http.port)
                assert status == 503
                typo = [p for p in problems if "BTCUSTD" in p]
                assert typo == [
                    "binance: symbol 'BTCUSTD' is not listed by Binance (nearest listed: BTCUSDT)"
                ], problems
                # ... and one error line naming provider, symbol, nearest spellings.
                lines = [e for e in logs if e["event"] == "instruments.symbol_problem"]
                assert lines and lines[0]["provider"] == "binance"
                assert lines[0]["symbol"] == "BTCUSTD" and lines[0]["nearest"] == ["BTCUSDT"]
                assert lines[0]["log_level"] == "error"
                # ... and metrics to alert on.
                sample = agent.metrics.registry.get_sample_value
                assert sample("mdagent_instrument_problems", {"provider": "binance"}) == 1
                assert sample("mdagent_instruments_listed", {"provider": "binance"}) == 2
                assert sample(
                    "mdagent_instruments_synced_timestamp_seconds", {"provider": "binance"}
                )

                # The venue halts ETHUSDT: the next pass stores the status and reports it.
                venue.set_faults(BinanceFaults(delisted=("ETHUSDT",)))
                done = synced(agent, "binance")
                await wait_until(lambda: synced(agent, "binance") >= done + 2)
                rows = await instrument_rows(dsn, "binance")
                assert rows["ETHUSDT"][2:4] == ("BREAK", False)
                _status, problems = await readyz_problems(agent.http.port)
                assert "binance: symbol 'ETHUSDT' is not trading (Binance status BREAK)" in problems
                # mdagent status shows them too (from the stored listing).
                offline = attrs.evolve(
                    config,
                    http=HttpConfig(enabled=False),
                    database=attrs.evolve(config.database, dsn=dsn),
                )
                status_data = await trio.to_thread.run_sync(collect_status, offline)
                assert sorted(status_data["instruments"]) == sorted(
                    p for p in problems if p.startswith("binance: symbol")
                )

                # Trading again: the halt problem goes, the typo stays.
                venue.set_faults(BinanceFaults())
                done = synced(agent, "binance")
                await wait_until(lambda: synced(agent, "binance") >= done + 2)
                _status, problems = await readyz_problems(agent.http.port)
                assert [p for p in problems if "symbol" in p] == typo

                # A reload that fixes the typo clears the problem at once (no REST pass).
                fixed = attrs.evolve(source, symbols=("btcusdt", "ETHUSDT"))
                await agent.apply_config(attrs.evolve(agent.config, sources=(fixed,)))
                _status, problems = await readyz_problems(agent.http.port)
                assert not [p for p in problems if "symbol" in p], problems
            nursery.cancel_scope.cancel()


async def test_polygon_reference_tickers_paged_delisted_and_unknown(
    fresh_db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = fresh_db_dsn
    monkeypatch.setenv(KEY_ENV, KEY)
    # Pages of 2 tickers: the listing is read by next_url.
    venue = FakePolygon(
        symbols=["AAPL", "IBM", "MSFT", "NVDA", "TSLA"],
        api_key=KEY,
        seed=4,
        events_per_s=20,
        reference_page_max=2,
    )
    venue.set_faults(delisted=("IBM",))
    with trio.fail_after(60), capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            ws_url, rest_url = await nursery.start(venue.serve)
            source = polygon_source(
                ws_url,
                ["AAPL", "IBM", "AAPX", "*"],
                ["T"],
                api_key_env=KEY_ENV,
                rest_url=rest_url,
            )
            config = with_http(make_config([source]), every_s=3600)
            async with running_agent(config, dsn) as agent:
                assert agent.instruments is not None
                await wait_until(lambda: synced(agent, "polygon") >= 1)
                rows = await instrument_rows(dsn, "polygon")
                # Every active ticker (3 pages), and the delisted one asked for by name.
                assert set(rows) == {"AAPL", "IBM", "MSFT", "NVDA", "TSLA"}
                assert rows["AAPL"][:9] == (
                    None, "USD", "active", True, None, None, "AAPL Fake Holdings Inc.",
                    "stocks", "CS",
                )  # fmt: skip
                assert rows["AAPL"][10] == "AAPL"
                assert rows["IBM"][2:4] == ("inactive", False)
                _status, problems = await readyz_problems(agent.http.port)
                assert [p for p in problems if "symbol" in p] == [
                    "polygon: symbol 'IBM' is not trading (Polygon status inactive)",
                    "polygon: symbol 'AAPX' is not listed by Polygon (nearest listed: AAPL)",
                ]
                lines = [e for e in logs if e["event"] == "instruments.symbol_problem"]
                assert {e["symbol"] for e in lines} == {"AAPX", "IBM"}  # "*" is no instrument
            nursery.cancel_scope.cancel()


async def test_failed_listing_is_retried_and_never_stops_the_agent(
    fresh_db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The venue refuses the listing (403, VenueRejected): logged, retried with backoff
    while the stream records; once the venue answers, the sync completes."""
    dsn = fresh_db_dsn
    monkeypatch.setenv(KEY_ENV, KEY)
    venue = FakePolygon(symbols=["AAPL"], api_key=KEY, seed=4, events_per_s=50)
    venue.set_faults(rest_not_entitled=("reference",))

    def failures() -> list[Any]:
        return [e for e in logs if e["event"] == "instruments.sync_failed"]

    with trio.fail_after(60), capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            ws_url, rest_url = await nursery.start(venue.serve)
            source = polygon_source(
                ws_url, ["AAPL"], ["T"], api_key_env=KEY_ENV, rest_url=rest_url, backfill=False
            )
            config = with_http(make_config([source]), every_s=3600)
            async with running_agent(config, dsn, instruments_retry_s=(0.05, 0.2)) as agent:
                assert agent.instruments is not None
                await wait_until(lambda: len(failures()) >= 3)
                assert "VenueRejected" in str(failures()[0]["error"])
                assert failures()[0]["provider"] == "polygon"
                assert synced(agent, "polygon") == 0
                venue.set_faults(rest_not_entitled=())
                await wait_until(lambda: synced(agent, "polygon") >= 1)
                assert set(await instrument_rows(dsn, "polygon")) == {"AAPL"}
                # The agent recorded all along.
                await wait_until(
                    lambda: bool(query(dsn, "SELECT 1 FROM trades WHERE provider = 'polygon'"))
                )
            nursery.cancel_scope.cancel()


def test_only_sources_that_want_it_are_synced() -> None:
    """``instruments = false`` on every source of a provider: that provider is not
    synced (nor checked), even though its REST client exists for the backfill."""
    from mdagent.pipeline.health import Health
    from mdagent.pipeline.instruments import InstrumentSync

    wanted = binance_source("ws://127.0.0.1:9", ["BTCUSDT"], ["trade"], rest_url="http://h")
    unwanted = polygon_source(
        "ws://127.0.0.1:9/stocks", ["AAPL"], ["T"], api_key_env=KEY_ENV, rest_url="http://h",
        instruments=False,
    )  # fmt: skip
    sources = (wanted, unwanted)
    histories: dict[str, Any] = {"binance": object(), "polygon": object()}
    sync = InstrumentSync("dsn", histories, lambda: sources, Health(), lambda: 1.0)
    assert sync.providers() == ["binance"]
