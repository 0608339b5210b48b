"""A third provider, defined only here, runs end to end through the unchanged generic code.

This is the "Adding a provider" checklist (README) done in one file: a toy
venue speaking a simple JSON trade stream over a real WebSocket, its sans-IO
parser, its stream half (connect + subscribe), a history half, one
``Provider`` description, and one registry line (``monkeypatch.setitem``).
Nothing under ``mdagent/`` knows the name "toy": the config, the stream
supervisor, the normalizer (dedup, a contiguous-id gap) and the writer take
it from the description alone, into a real PostgreSQL.

The toy wire: the client sends ``{"subscribe": ["ABC", ...]}``; the venue
answers with one frame per trade, ``{"s": "ABC", "i": 7, "p": "1.25",
"q": "3", "t": <ms>}``, ids contiguous per symbol from 1.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import pytest
import trio

from mdagent.config import parse_config
from mdagent.errors import ConfigError, StreamError
from mdagent.providers import registry
from mdagent.providers.base import (
    ApiError,
    Channel,
    Page,
    PageRequest,
    Provider,
    SequenceRule,
    Source,
    SymbolRule,
    channel_table,
)
from mdagent.providers.wsclient import WebSocketError, WebSocketStream, connect_websocket
from mdagent.records import DeadLetter, Record, Trade
from mdagent.testing.httpserver import HttpRequest, HttpResponse, json_response
from mdagent.testing.venue import FakeVenue, VenueFaults, serving
from mdagent.testing.wsserver import IncomingWebSocket, TextReceived, WebSocketClosed
from tests.agent_support import make_config, query, running_agent, venue_source, wait_until

NAME = "toy"

# -- the provider: parser, stream half, history half, description ---------------------------


class ToyParser:
    def parse(self, frame: bytes | str, received_ns: int) -> Sequence[Record]:
        try:
            d = json.loads(frame)
            return [
                Trade(
                    provider=NAME,
                    symbol=d["s"],
                    channel="trades",
                    trade_id=str(d["i"]),
                    seq=d["i"],
                    ts_ns=d["t"] * 1_000_000,
                    price=d["p"],
                    size=d["q"],
                    received_ns=received_ns,
                )
            ]
        except (ValueError, KeyError, TypeError) as exc:
            text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
            return [DeadLetter(NAME, "stream", f"bad frame: {exc!r}", text, received_ns)]


class ToyStream:
    def new_parser(self, source: Source) -> ToyParser:
        return ToyParser()

    def connection_urls(self, source: Source) -> list[str]:
        return [source.effective_ws_url()]

    def subscribe_messages(self, source: Source) -> list[str]:
        return [json.dumps({"subscribe": list(source.symbols)})]

    @asynccontextmanager
    async def connect(self, source: Source) -> AsyncIterator[WebSocketStream]:
        url = source.effective_ws_url()
        try:
            with trio.fail_after(5):
                ws = await connect_websocket(url)
                for message in self.subscribe_messages(source):
                    await ws.send_text(message)
        except (trio.TooSlowError, WebSocketError, OSError) as exc:
            raise StreamError(f"connecting to {url} failed: {exc!r}") from exc
        try:
            yield WebSocketStream(ws)
        finally:
            await ws.aclose()


class ToyHistory:
    def parse_page(self, request: PageRequest, body: bytes, received_ns: int) -> Page:
        raise ValueError("the toy venue keeps no history")

    def parse_error(self, http_status: int, body: bytes) -> ApiError | None:
        return None


def _symbol_problem(symbol: str) -> str | None:
    return None if re.fullmatch(r"[A-Z]{3}", symbol) else "expected three capital letters"


TOY = Provider(
    name=NAME,
    title="Toy",
    channels=channel_table(
        [
            Channel(
                "trades",
                "trades",
                SequenceRule(identifies=True, contiguous=True),
                history=False,
            )
        ]
    ),
    symbols=SymbolRule(_symbol_problem, "three capital letters"),
    ws_url="ws://127.0.0.1:1",
    rest_url="http://127.0.0.1:1",
    stream=ToyStream(),
    history=ToyHistory(),
)

# -- the fake venue: a FakeVenue subclass like every provider's -----------------------------


class ToyVenue(FakeVenue[VenueFaults]):
    """Sends ``trades_per_symbol`` trades per subscribed symbol, then holds the connection.

    ``skip``: (symbol, id) pairs generated but never sent (a frame the client missed).
    """

    def __init__(
        self,
        *,
        symbols: Sequence[str],
        seed: int = 1,
        events_per_s: float = 0.0,
        faults: VenueFaults | None = None,
        trades_per_symbol: int = 50,
        skip: frozenset[tuple[str, int]] = frozenset(),
    ) -> None:
        super().__init__(
            symbols=symbols, seed=seed, events_per_s=events_per_s, faults=faults or VenueFaults()
        )
        self.trades_per_symbol = trades_per_symbol
        self.skip = skip
        self.truth: dict[str, list[dict[str, Any]]] = {s: [] for s in self.symbols}

    def market(self, symbol: str) -> list[dict[str, Any]]:
        price = Decimal(len(symbol)) + Decimal(self.seed)
        return [
            {"s": symbol, "i": i, "p": str(price + Decimal(i) / 100), "q": f"{i}.5"}
            for i in range(1, self.trades_per_symbol + 1)
        ]

    def stats(self) -> dict[str, Any]:
        return dict(self.counters)

    async def _handle_ws(self, incoming: IncomingWebSocket) -> None:
        ws = await incoming.accept()
        self.counters["connections"] += 1
        try:
            event = await ws.receive()
            assert isinstance(event, TextReceived), event
            for symbol in json.loads(event.text)["subscribe"]:
                for trade in self.market(symbol):
                    if (symbol, trade["i"]) in self.skip:
                        continue
                    trade = {**trade, "t": time.time_ns() // 1_000_000}
                    await ws.send_text(json.dumps(trade))
                    self.truth[symbol].append(trade)
                    self.counters["frames_sent"] += 1
            await trio.sleep_forever()
        except WebSocketClosed:
            return

    async def _handle_http(self, request: HttpRequest) -> HttpResponse:
        self.counters["rest_requests"] += 1
        return json_response(404, {"error": "the toy venue keeps no history"})


# -- the tests ---------------------------------------------------------------------------------


@pytest.fixture
def toy_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one registry line, for this test only."""
    monkeypatch.setitem(registry.PROVIDERS, NAME, TOY)


@pytest.mark.usefixtures("toy_registered")
def test_config_takes_the_toy_rules_from_its_description() -> None:
    source = {"provider": NAME, "symbols": ["ABC", "abc"], "channels": ["trades", "quotes"]}
    with pytest.raises(ConfigError) as caught:
        parse_config({"sources": [source]})
    assert caught.value.problems == [
        "sources[0].symbols[1]: invalid symbol 'abc' for provider toy:"
        " expected three capital letters",
        "sources[0].channels[1]: unknown channel 'quotes' for provider toy",
    ]
    good = parse_config({"sources": [{**source, "symbols": ["ABC"], "channels": ["trades"]}]})
    assert good.sources[0].effective_ws_url() == TOY.ws_url


@pytest.mark.usefixtures("toy_registered")
async def test_toy_provider_end_to_end_into_postgresql(fresh_db_dsn: str) -> None:
    symbols = ["ABC", "XYZ"]
    toy = ToyVenue(symbols=symbols, trades_per_symbol=40, skip=frozenset({("ABC", 25)}))
    async with serving(toy) as venue:
        source = venue_source(NAME, venue.ws_url, symbols, ["trades"])
        async with running_agent(make_config([source]), fresh_db_dsn):

            def all_stored() -> bool:
                sent = sum(len(t) for t in venue.truth.values())
                rows = query(fresh_db_dsn, "SELECT count(*) FROM trades WHERE provider = %s", NAME)
                return sent == 79 and rows[0][0] == sent

            await wait_until(all_stored, timeout=30)

    stored = query(
        fresh_db_dsn,
        "SELECT symbol, trade_id, price, size FROM trades WHERE provider = %s"
        " ORDER BY symbol, trade_id::bigint",
        NAME,
    )
    expected = [
        (t["s"], str(t["i"]), Decimal(t["p"]), Decimal(t["q"]))
        for symbol in sorted(symbols)
        for t in venue.truth[symbol]
    ]
    assert stored == expected  # exact decimals, nothing lost, nothing twice
    offsets = query(
        fresh_db_dsn,
        "SELECT symbol, channel, last_seq FROM stream_offsets WHERE provider = %s ORDER BY symbol",
        NAME,
    )
    assert offsets == [("ABC", "trades", 40), ("XYZ", "trades", 40)]
    # The description says the ids are contiguous, so the skipped one is a gap.
    gaps = query(
        fresh_db_dsn,
        "SELECT symbol, channel, from_seq, to_seq, status FROM fetch_jobs WHERE provider = %s",
        NAME,
    )
    assert gaps == [("ABC", "trades", 25, 25, "pending")]
