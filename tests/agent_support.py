"""Running a real Agent against a fake venue and a real database, for the end-to-end tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import attrs
import psycopg
import trio

from mdagent.config import Config, DatabaseConfig, HttpConfig, PipelineConfig, SourceConfig
from mdagent.pipeline.agent import Agent
from mdagent.testing.binance.marketgen import SymbolMarket


def make_config(sources: list[SourceConfig], **database: Any) -> Config:
    return Config(
        sources=tuple(sources),
        database=DatabaseConfig(**{"batch_max_delay_s": 0.05, **database}),
        http=HttpConfig(enabled=False),
        # The production stop limit (60 s): a loaded CI machine's writer may
        # lag for seconds, and a backpressure stop would reconnect streams that
        # the tests count as never reconnected (none of them tests the stop).
        pipeline=PipelineConfig(),
    )


def venue_source(
    provider: str, ws_url: str, symbols: list[str], channels: list[str], **kw: Any
) -> SourceConfig:
    """A source of ``provider`` pointed at a fake venue, reconnecting quickly; gaps are
    filled and instruments synced from REST only when ``rest_url`` is given (else the
    default is the real venue)."""
    kw.setdefault("backfill", bool(kw.get("rest_url")))
    kw.setdefault("instruments", bool(kw.get("rest_url")))
    return SourceConfig(
        provider=provider,
        symbols=tuple(symbols),
        channels=tuple(channels),
        ws_url=ws_url,
        reconnect_initial_s=0.05,
        reconnect_max_s=0.5,
        **kw,
    )


def binance_source(ws_url: str, symbols: list[str], channels: list[str], **kw: Any) -> SourceConfig:
    return venue_source("binance", ws_url, symbols, channels, **kw)


@asynccontextmanager
async def running_agent(config: Config, dsn: str, **agent_kw: Any) -> AsyncIterator[Agent]:
    """An Agent running in the background; on exit it is shut down (drained) and awaited."""
    agent = Agent(config, dsn, handle_signals=False, **agent_kw)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        try:
            yield agent
        finally:
            agent.request_shutdown()
    agent.copy_writer.close()


# How long an added symbol's or a resubscribed stream's data may take to be
# stored after the change. Quick on a quiet machine (well under 2 s, the
# tests print the slowest); the bound only has to stay far below what a
# missed change would cost (a reconnect after stale_after_s, 30 s, shows in the
# connection counts the tests assert; no data at all fails outright), not
# measure a loaded CI machine's scheduling.
DATA_AFTER_CHANGE_S = 30.0
# A stream rule's detection on a loaded machine may come later than its
# cadence says (the event loop shares 2 cores with the suite); still far
# below stale_after_s (30 s) and the default quiet_time_s (120 s), the delays a
# missed detection would show instead.
LOADED_LOOP_SLACK_S = 6.0


async def wait_until(
    predicate: Callable[[], bool], *, timeout: float = 30.0, poll: float = 0.05
) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(poll)


def query(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


async def aquery(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return await trio.to_thread.run_sync(lambda: query(dsn, sql, *params))


@attrs.frozen
class StoredTrade:
    trade_id: int
    price: Decimal
    size: Decimal


def stored_trades(dsn: str, symbol: str, channel: str) -> list[tuple[int, Decimal, Decimal]]:
    rows = query(
        dsn,
        "SELECT trade_id::bigint, price, size FROM trades WHERE provider = 'binance'"
        " AND symbol = %s AND channel = %s ORDER BY trade_id::bigint",
        symbol,
        channel,
    )
    return [(int(r[0]), r[1], r[2]) for r in rows]


def polygon_source(
    ws_url: str, tickers: list[str], channels: list[str], *, api_key_env: str, **kw: Any
) -> SourceConfig:
    return venue_source("polygon", ws_url, tickers, channels, api_key_env=api_key_env, **kw)


async def settle(
    check: Callable[[], Awaitable[list[str]]], *, timeout: float = 20.0, poll: float = 0.1
) -> list[str]:
    """Poll ``check`` until it reports no problems or ``timeout`` passes; the last problems.

    For waits whose failure should read as a diff ("3 trades missing") rather
    than a bare TooSlowError: the caller asserts the result is empty.
    """
    with trio.move_on_after(timeout):
        while True:
            problems = await check()
            if not problems:
                return problems
            await trio.sleep(poll)
    return await check()


def assert_trades_are_the_markets(dsn: str, market: SymbolMarket) -> None:
    """Every stored Binance ``trade`` row has the price and size text of the market's trade
    with that id (stream and REST copies alike)."""
    stored = query(
        dsn,
        "SELECT trade_id::bigint, price::text, size::text FROM trades"
        " WHERE provider = 'binance' AND symbol = %s AND channel = 'trade' ORDER BY 1",
        market.symbol,
    )
    assert stored, f"no trades stored for {market.symbol}"
    for trade_id, price, size in stored:
        truth = market.trade(trade_id)
        assert truth is not None and (price, size) == (truth.p, truth.q), trade_id
