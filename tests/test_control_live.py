"""Subscription changes racing on one live connection, against the fake venues over sockets.

A reload's change and the silent-stream rule's renew (unsubscribe, then
subscribe again) can be under way on one connection at the same time.
Binance closes a connection that sends more than 5 messages in a rolling
second (wire-formats.md 1.3): together they must keep that budget. And a renew
must not bring back a stream the reload is removing.
"""

from __future__ import annotations

import attrs
import pytest
import trio

from mdagent.providers.binance.io import BinanceAdapter, BinanceConnection
from mdagent.providers.polygon.io import PolygonAdapter, PolygonConnection
from mdagent.testing.binance.venue import FakeBinance
from mdagent.testing.polygon.venue import FakePolygon
from mdagent.testing.venue import serving
from tests.agent_support import binance_source, polygon_source
from tests.test_agent_polygon import KEY, KEY_ENV

SYMBOLS = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT"]


async def test_concurrent_control_requests_share_the_budget() -> None:
    venue = FakeBinance(symbols=SYMBOLS, seed=5, events_per_s=50)
    with trio.fail_after(60):
        async with serving(venue):
            source = binance_source(venue.ws_url, SYMBOLS, ["trade"])
            async with BinanceAdapter().connect(source) as conn:
                assert isinstance(conn, BinanceConnection)

                async def read() -> None:
                    while True:
                        await conn.receive_batch()

                renewed: list[bool] = []

                async def renew(symbol: str) -> None:
                    renewed.append(await conn.renew([(symbol, "trade")]))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read)
                    async with trio.open_nursery() as requests:
                        for symbol in SYMBOLS:
                            requests.start_soon(renew, symbol)
                    nursery.cancel_scope.cancel()
    # 14 control messages sent from 7 tasks at once, none of them over the budget.
    assert renewed == [True] * len(SYMBOLS)
    assert "Too many requests" not in venue.disconnect_reasons, venue.disconnect_reasons


async def test_a_renew_does_not_bring_back_a_ticker_a_reload_removes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    venue = FakePolygon(symbols=["AAPL", "MSFT"], api_key=KEY, seed=7, events_per_s=100)
    with trio.fail_after(30):
        async with serving(venue):
            old = polygon_source(venue.ws_url, ["AAPL", "MSFT"], ["T"], api_key_env=KEY_ENV)
            new = attrs.evolve(old, symbols=("AAPL",))
            async with PolygonAdapter().connect(old) as conn:
                assert isinstance(conn, PolygonConnection)

                async def read() -> None:
                    while True:
                        await conn.receive_batch()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read)
                    async with trio.open_nursery() as changes:
                        changes.start_soon(conn.renew, [("MSFT", "T")])
                        # The reload starts while the renew waits for its unsubscribe.
                        while not conn._awaited:
                            await trio.lowlevel.checkpoint()
                        changes.start_soon(conn.resubscribe, old, new)
                    nursery.cancel_scope.cancel()
                assert conn.params == {"T.AAPL"}
