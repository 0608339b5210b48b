"""Reload at symbol granularity: added symbols are subscribed on the live connection.

The agent runs against the fake Binance venue and a real PostgreSQL; a reload
that only changes a named source's symbols sends SUBSCRIBE / UNSUBSCRIBE (each
reply checked by id) instead of reconnecting, so the unchanged symbols' data
has no hole and the venue never sees the client close a connection.
"""

from __future__ import annotations

import attrs
import trio

from mdagent.config import Config, SourceConfig
from mdagent.testing.binance.venue import FakeBinance
from tests.agent_support import (
    aquery,
    binance_source,
    make_config,
    query,
    running_agent,
    wait_until,
)
from tests.test_agent_binance import (
    assert_book_updates_match_venue,
    assert_trades_match_venue,
    caught_up,
)

STEADY = [f"S{i:02d}USDT" for i in range(16)]
TOGGLED = [f"T{i:02d}USDT" for i in range(4)]
CHANNELS = ["trade", "bookTicker"]


def with_symbols(config: Config, symbols: list[str]) -> Config:
    source: SourceConfig = attrs.evolve(config.sources[0], symbols=tuple(symbols))
    return attrs.evolve(config, sources=(source,))


async def stored_count(dsn: str, symbol: str) -> int:
    rows = await aquery(
        dsn, "SELECT count(*) FROM trades WHERE symbol = %s AND channel = 'trade'", symbol
    )
    return int(rows[0][0])


async def test_fifty_reloads_keep_the_connection_and_lose_nothing(fresh_db_dsn: str) -> None:
    dsn = fresh_db_dsn
    venue = FakeBinance(symbols=STEADY + TOGGLED, seed=12, events_per_s=3000)
    with trio.fail_after(150):
        async with trio.open_nursery() as nursery:
            ws_url, _rest = await nursery.start(venue.serve)
            config = make_config(
                [binance_source(ws_url, STEADY, CHANNELS, name="binance-spot", backfill=False)]
            )
            async with running_agent(config, dsn) as agent:
                await wait_until(lambda: venue.stats()["connections_open"] == 1)
                slowest = 0.0
                began = trio.current_time()
                for reload in range(50):
                    extra = TOGGLED[reload // 2 % len(TOGGLED)]
                    adding = reload % 2 == 0
                    symbols = [*STEADY, extra] if adding else STEADY
                    before = await stored_count(dsn, extra)
                    started = trio.current_time()
                    await agent.apply_config(with_symbols(config, symbols))
                    if adding:
                        # The added symbol's data is in the database within 2 s.
                        with trio.fail_after(2.0):
                            while await stored_count(dsn, extra) <= before:
                                await trio.sleep(0.02)
                        slowest = max(slowest, trio.current_time() - started)
                    subscribed = venue.stats()["connections"][0]["streams"]
                    assert (f"{extra.lower()}@trade" in subscribed) == adding
                print(
                    f"50 reloads in {trio.current_time() - began:.1f} s; slowest added"
                    f" symbol: {slowest:.3f} s after its reload"
                )
                venue.stall(3600)
                await wait_until(lambda: caught_up(dsn, venue, STEADY))
                # One connection for the whole run: no reload closed or reopened it.
                stats = venue.stats()
                assert stats["connections_total"] == 1, stats["disconnect_reasons"]
                assert stats["connections_open"] == 1
                assert not stats["disconnect_reasons"]
            nursery.cancel_scope.cancel()
    for symbol in STEADY:
        assert_trades_match_venue(dsn, venue, symbol)
        assert_book_updates_match_venue(dsn, venue, symbol)
    # Nothing of a removed symbol was refused as "not subscribed".
    dead = query(dsn, "SELECT reason, left(payload, 120) FROM dead_letter")
    assert dead == []
