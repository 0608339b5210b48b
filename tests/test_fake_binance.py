"""The fake Binance venue, over real loopback sockets (trio-websocket and httpx clients).

Synchronisation is by reading what the venue sends, never by sleeping; the
only sleeps are where elapsed time itself is under test (stalls, slow REST,
keepalive).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from itertools import pairwise
from typing import Any

import httpx
import orjson
import pytest
import trio
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
)
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Pong, Request, TextMessage

from mdagent.testing.binance.marketgen import format_units
from mdagent.testing.binance.venue import BinanceFaults, FakeBinance, IdRanges
from mdagent.testing.venue import serving
from mdagent.testing.wsserver import encode_text_frame

DECIMAL_8 = re.compile(r"^\d+\.\d{8}$")


@asynccontextmanager
async def rest(venue: FakeBinance) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=venue.rest_url) as client:
        yield client


async def recv(ws: WebSocketConnection) -> Any:
    return orjson.loads(await ws.get_message())


async def recv_n(ws: WebSocketConnection, n: int) -> list[Any]:
    return [await recv(ws) for _ in range(n)]


async def reply_to(ws: WebSocketConnection, req_id: Any) -> Any:
    """Skip data frames until the reply to request ``req_id``."""
    while True:
        msg = await recv(ws)
        if isinstance(msg, dict) and "id" in msg and msg["id"] == req_id:
            return msg


async def request(ws: WebSocketConnection, method: str, req_id: Any, params: Any = None) -> Any:
    body: dict[str, Any] = {"method": method, "id": req_id}
    if params is not None:
        body["params"] = params
    await ws.send_message(json.dumps(body))
    return await reply_to(ws, req_id)


def code_of(closed: ConnectionClosed) -> int:
    reason = closed.reason
    assert isinstance(reason, CloseReason)
    return reason.code


async def read_until_closed(ws: WebSocketConnection) -> tuple[list[str | bytes], ConnectionClosed]:
    messages = []
    while True:
        try:
            messages.append(await ws.get_message())
        except ConnectionClosed as exc:
            return messages, exc


# -- framing -----------------------------------------------------------------------------------


async def test_combined_framing_wraps_each_event() -> None:
    with trio.fail_after(10):
        async with serving(FakeBinance(events_per_s=0, kline_push_interval_s=0)) as venue:
            streams = [
                "btcusdt@trade",
                "ethusdt@aggTrade",
                "bnbusdt@bookTicker",
                "btcusdt@kline_1m",
            ]
            url = f"{venue.ws_url}/stream?streams={'/'.join(streams)}"
            async with open_websocket_url(url) as ws:
                seen = set()
                for msg in await recv_n(ws, 400):
                    assert set(msg) == {"stream", "data"}
                    seen.add(msg["stream"])
                    data = msg["data"]
                    sym = msg["stream"].split("@")[0].upper()
                    assert data["s"] == sym
                    if msg["stream"].endswith("@bookTicker"):
                        assert "e" not in data and "E" not in data  # as on the real venue
                    else:
                        assert data["e"] in ("trade", "aggTrade", "kline")
                assert seen == set(streams)


async def test_raw_framing_sends_bare_payload_with_send_time() -> None:
    with trio.fail_after(10):
        async with (
            serving(FakeBinance(events_per_s=0)) as venue,
            open_websocket_url(f"{venue.ws_url}/ws/btcusdt@trade") as ws,
        ):
            for msg in await recv_n(ws, 50):
                assert msg["e"] == "trade" and "stream" not in msg
                assert abs(msg["E"] - time.time() * 1000) < 60_000  # now, not market time
                assert msg["T"] <= msg["E"]
            url = f"{venue.ws_url}/ws/btcusdt@trade?timeUnit=MICROSECOND"
            async with open_websocket_url(url) as ws:
                msg = await recv(ws)
                assert abs(msg["E"] - time.time() * 1_000_000) < 60_000_000
                assert msg["T"] > 10**15


async def test_uppercase_stream_names_are_rejected() -> None:
    with trio.fail_after(10):
        async with serving(FakeBinance()) as venue:
            with pytest.raises(ConnectionRejected) as rejected:
                async with open_websocket_url(f"{venue.ws_url}/ws/BTCUSDT@trade"):
                    pass
            assert rejected.value.status_code == 400
            assert rejected.value.body is not None
            assert orjson.loads(rejected.value.body)["code"] == 2
            async with open_websocket_url(f"{venue.ws_url}/ws") as ws:
                reply = await request(ws, "SUBSCRIBE", 7, ["BTCUSDT@trade"])
                assert reply == {
                    "error": {"code": 2, "msg": "Invalid request: invalid stream"},
                    "id": 7,
                }


async def test_documented_error_style() -> None:
    with trio.fail_after(10):
        async with (
            serving(FakeBinance(ws_error_style="documented")) as venue,
            open_websocket_url(f"{venue.ws_url}/ws") as ws,
        ):
            reply = await request(ws, "SUBSCRIBE", 1, ["btc@nosuchchannel"])
            assert reply["code"] == 2 and reply["msg"].startswith("Invalid request: ")
            await ws.send_message("{not json")
            reply = await recv(ws)
            assert reply["code"] == 3


# -- control messages and limits ---------------------------------------------------------------


async def test_subscribe_list_unsubscribe() -> None:
    with trio.fail_after(10):
        async with (
            serving(FakeBinance(events_per_s=2000)) as venue,
            open_websocket_url(f"{venue.ws_url}/ws") as ws,
        ):
            assert await request(ws, "LIST_SUBSCRIPTIONS", 1) == {"result": [], "id": 1}
            reply = await request(ws, "SUBSCRIBE", 2, ["btcusdt@trade", "ethusdt@bookTicker"])
            assert reply == {"result": None, "id": 2}
            kinds = {("e" in m and m["s"]) or ("u" in m and m["s"]) for m in await recv_n(ws, 60)}
            assert kinds == {"BTCUSDT", "ETHUSDT"}
            reply = await request(ws, "LIST_SUBSCRIPTIONS", "abc")
            assert reply == {"result": ["btcusdt@trade", "ethusdt@bookTicker"], "id": "abc"}
            assert await request(ws, "UNSUBSCRIBE", 3, ["btcusdt@trade"]) == {
                "result": None,
                "id": 3,
            }
            # Nothing of the removed stream may follow the reply.
            for msg in await recv_n(ws, 40):
                assert msg["s"] == "ETHUSDT" and "u" in msg
            reply = await request(ws, "LIST_SUBSCRIPTIONS", 4)
            assert reply == {"result": ["ethusdt@bookTicker"], "id": 4}


async def test_a_silently_dropped_subscription_sends_nothing_but_stays_listed() -> None:
    with trio.fail_after(10):
        async with (
            serving(FakeBinance(events_per_s=2000)) as venue,
            open_websocket_url(f"{venue.ws_url}/ws") as ws,
        ):
            venue.set_faults(silent_streams=("btcusdt@trade",))
            reply = await request(ws, "SUBSCRIBE", 1, ["btcusdt@trade", "ethusdt@trade"])
            assert reply == {"result": None, "id": 1}
            assert {m["s"] for m in await recv_n(ws, 60)} == {"ETHUSDT"}
            reply = await request(ws, "LIST_SUBSCRIPTIONS", 2)
            assert reply == {"result": ["btcusdt@trade", "ethusdt@trade"], "id": 2}
            assert venue.truth.trade_ids("BTCUSDT") == []


async def test_a_silently_dropped_subscription_comes_back_when_subscribed_again() -> None:
    with trio.fail_after(10):
        async with (
            serving(FakeBinance(events_per_s=2000)) as venue,
            open_websocket_url(f"{venue.ws_url}/ws") as ws,
        ):
            venue.set_faults(silent_streams=("btcusdt@trade",))
            await request(ws, "SUBSCRIBE", 1, ["btcusdt@trade", "ethusdt@trade"])
            assert {m["s"] for m in await recv_n(ws, 60)} == {"ETHUSDT"}
            venue.set_faults(silent_streams=("btcusdt@trade",), silent_until_resubscribed=True)
            assert await request(ws, "UNSUBSCRIBE", 2, ["btcusdt@trade"]) == {
                "result": None,
                "id": 2,
            }
            assert await request(ws, "SUBSCRIBE", 3, ["btcusdt@trade"]) == {"result": None, "id": 3}
            assert "BTCUSDT" in {m["s"] for m in await recv_n(ws, 200)}


async def test_at_most_1024_streams() -> None:
    with trio.fail_after(10):
        async with serving(FakeBinance()) as venue:
            names = [f"sym{i}usdt@trade" for i in range(1024)]
            async with open_websocket_url(f"{venue.ws_url}/ws") as ws:
                assert await request(ws, "SUBSCRIBE", 1, names) == {"result": None, "id": 1}
                reply = await request(ws, "SUBSCRIBE", 2, ["one1more@trade"])
                assert reply["error"]["code"] == 2
                reply = await request(ws, "LIST_SUBSCRIPTIONS", 3)
                assert len(reply["result"]) == 1024
            too_many = "/".join([*names, "one1more@trade"])
            with pytest.raises(ConnectionRejected):
                async with open_websocket_url(f"{venue.ws_url}/stream?streams={too_many}"):
                    pass


async def test_more_than_5_client_messages_per_second_disconnects() -> None:
    with trio.fail_after(10):
        async with serving(FakeBinance()) as venue, open_websocket_url(f"{venue.ws_url}/ws") as ws:
            for i in range(5):
                await ws.send_message(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
            for i in range(5):
                assert (await recv(ws))["id"] == i
            assert venue.stats()["connections_open"] == 1
            await ws.ping(b"x")  # pings count too: this is the 6th message
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert code_of(closed.value) == 1008
            assert venue.disconnect_reasons["Too many requests"] == 1


class RawClient:
    """A bare wsproto client that never answers pings on its own."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)

    @classmethod
    async def connect(cls, ws_url: str, target: str) -> RawClient:
        host, port = ws_url.removeprefix("ws://").rsplit(":", 1)
        client = cls(await trio.open_tcp_stream(host, int(port)))
        await client.stream.send_all(client.ws.send(Request(host=host, target=target)))
        assert isinstance(await client.next_event(), AcceptConnection)
        return client

    async def next_event(self) -> Any:
        while True:
            for event in self.ws.events():
                return event
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.ws.receive_data(data)

    async def send(self, event: Any) -> None:
        await self.stream.send_all(self.ws.send(event))


async def test_server_pings_and_disconnects_without_pong() -> None:
    with trio.fail_after(10):
        venue = FakeBinance(ping_interval_s=0.05, pong_timeout_s=0.4)
        async with serving(venue):
            # Before the connect: the venue's pong clock starts during it, and a
            # loaded machine may return from the connect well after that.
            start = trio.current_time()
            client = await RawClient.connect(venue.ws_url, "/ws")
            pings = 0
            while True:
                event = await client.next_event()
                if isinstance(event, Ping):
                    pings += 1
                    if pings == 1:
                        # An unsolicited pong (wrong payload) does not keep it alive.
                        await client.send(Pong(payload=b"unsolicited"))
                    continue
                assert isinstance(event, CloseConnection)
                break
            assert pings >= 3
            assert event.code == 1008 and event.reason == "Pong timeout"
            assert trio.current_time() - start >= 0.39
            await client.stream.aclose()


async def test_answered_pings_keep_the_connection_alive() -> None:
    with trio.fail_after(10):
        venue = FakeBinance(ping_interval_s=0.25, pong_timeout_s=0.5, events_per_s=50)
        async with serving(venue), open_websocket_url(f"{venue.ws_url}/ws/btcusdt@trade") as ws:
            # trio-websocket answers pings while it reads: read for 1.5 pong timeouts.
            deadline = trio.current_time() + 0.75
            while trio.current_time() < deadline:
                await ws.get_message()
            assert not ws.closed
            assert "Pong timeout" not in venue.disconnect_reasons


# -- data --------------------------------------------------------------------------------------


async def test_ids_are_contiguous_and_prices_exact() -> None:
    with trio.fail_after(15):
        async with serving(FakeBinance(events_per_s=0)) as venue:
            url = f"{venue.ws_url}/stream?streams=btcusdt@trade/btcusdt@aggTrade/btcusdt@bookTicker"
            async with open_websocket_url(url) as ws:
                msgs = [m["data"] for m in await recv_n(ws, 3000)]
        trades = [m for m in msgs if m.get("e") == "trade"]
        aggs = [m for m in msgs if m.get("e") == "aggTrade"]
        books = [m for m in msgs if "u" in m]
        assert [t["t"] for t in trades] == list(range(trades[0]["t"], trades[0]["t"] + len(trades)))
        assert [a["a"] for a in aggs] == list(range(aggs[0]["a"], aggs[0]["a"] + len(aggs)))
        by_id = {t["t"]: t for t in trades}
        for prev, agg in pairwise(aggs):
            assert agg["f"] == prev["l"] + 1
        for agg in aggs[:-1]:
            covered = [by_id[i] for i in range(agg["f"], agg["l"] + 1)]
            assert {t["p"] for t in covered} == {agg["p"]}
            assert sum(Decimal(t["q"]) for t in covered) == Decimal(agg["q"])
            assert all(t["m"] == agg["m"] for t in covered)
        for m in trades + aggs:
            assert DECIMAL_8.match(m["p"]) and DECIMAL_8.match(m["q"])
        ups = [b["u"] for b in books]
        assert all(b > a for a, b in pairwise(ups))
        assert any(b - a > 1 for a, b in pairwise(ups))  # gaps are normal
        for b in books:
            assert Decimal(b["b"]) < Decimal(b["a"])


async def test_klines_match_trades_and_close_with_x_true() -> None:
    with trio.fail_after(15):
        venue = FakeBinance(events_per_s=3000, kline_push_interval_s=0)
        async with serving(venue):
            url = f"{venue.ws_url}/stream?streams=btcusdt@trade/btcusdt@kline_1s"
            trades: dict[int, Any] = {}
            finals: list[Any] = []
            async with open_websocket_url(url) as ws:
                last_open: Any = None
                while len(finals) < 2:
                    msg = (await recv(ws))["data"]
                    if msg["e"] == "trade":
                        trades[msg["t"]] = msg
                        continue
                    k = msg["k"]
                    if k["x"]:
                        finals.append(k)
                    else:
                        last_open = k
                        assert k["t"] <= msg["E"] <= k["T"] + 1000
            assert last_open is not None and last_open["t"] > finals[0]["t"]
            first_seen = min(trades)
            for k in finals:
                if k["f"] < first_seen:
                    continue  # the bar began before this connection
                covered = [trades[i] for i in range(k["f"], k["L"] + 1)]
                prices = [Decimal(t["p"]) for t in covered]
                assert k["n"] == len(covered)
                assert Decimal(k["o"]) == prices[0] and Decimal(k["c"]) == prices[-1]
                assert Decimal(k["h"]) == max(prices) and Decimal(k["l"]) == min(prices)
                assert Decimal(k["v"]) == sum(Decimal(t["q"]) for t in covered)
                assert k["T"] - k["t"] == 999
                assert all(k["t"] <= t["T"] <= k["T"] for t in covered)
            # REST klines are computed from the same trades.
            async with rest(venue) as client:
                r = await client.get(
                    "/api/v3/klines",
                    params={"symbol": "BTCUSDT", "interval": "1s", "startTime": finals[0]["t"]},
                )
                rows = {row[0]: row for row in r.json()}
            for k in finals:
                row = rows[k["t"]]
                assert row[1:6] == [k["o"], k["h"], k["l"], k["c"], k["v"]] and row[8] == k["n"]
            truth = venue.truth.final_klines("BTCUSDT", "1s")
            assert [k["t"] for k in truth][:2] == [k["t"] for k in finals]


async def test_connections_share_one_market() -> None:
    with trio.fail_after(10):
        async with serving(FakeBinance(events_per_s=0)) as venue:
            url = f"{venue.ws_url}/ws/btcusdt@trade"
            async with open_websocket_url(url) as first:
                a = {m["t"]: m for m in await recv_n(first, 100)}
                async with open_websocket_url(url) as second:
                    b = {m["t"]: m for m in await recv_n(second, 100)}
                    # The first connection goes on to receive the second one's trades.
                    while max(a) < max(b):
                        m = await recv(first)
                        a[m["t"]] = m
        common = set(a) & set(b)
        assert len(common) == 100
        for i in common:
            assert (a[i]["p"], a[i]["q"], a[i]["T"]) == (b[i]["p"], b[i]["q"], b[i]["T"])
        assert [t.id for t in venue.sent_trades("BTCUSDT")][: len(a)] == sorted(a)


async def test_pace_is_frames_per_second_per_connection() -> None:
    with trio.fail_after(10):
        venue = FakeBinance(events_per_s=200)
        async with serving(venue), open_websocket_url(f"{venue.ws_url}/ws/btcusdt@trade") as ws:
            await recv(ws)
            start = trio.current_time()
            await recv_n(ws, 100)
            elapsed = trio.current_time() - start
        assert 0.4 < elapsed < 1.0


async def test_same_seed_same_data_other_seed_other_data() -> None:
    async def first_trades(seed: int) -> list[tuple[int, str, str, bool]]:
        async with (
            serving(FakeBinance(seed=seed, events_per_s=0)) as venue,
            open_websocket_url(f"{venue.ws_url}/ws/ethusdt@trade") as ws,
        ):
            return [(m["t"], m["p"], m["q"], m["m"]) for m in await recv_n(ws, 300)]

    with trio.fail_after(10):
        a, b, c = await first_trades(7), await first_trades(7), await first_trades(8)
    assert a == b
    assert a != c


# -- faults ------------------------------------------------------------------------------------


async def test_fault_disconnect_every_n_frames() -> None:
    with trio.fail_after(10):
        venue = FakeBinance(events_per_s=0, faults=BinanceFaults(disconnect_every_frames=50))
        async with serving(venue):
            received: list[int] = []
            for _ in range(2):
                async with open_websocket_url(f"{venue.ws_url}/ws/btcusdt@trade") as ws:
                    messages, closed = await read_until_closed(ws)
                assert len(messages) == 50
                assert code_of(closed) == 1006  # TCP dropped, no close frame
                received += [orjson.loads(m)["t"] for m in messages]
        assert venue.truth.trade_ids("BTCUSDT") == sorted(received)
        assert venue.disconnect_reasons["fault: disconnect"] == 2


async def test_fault_skip_trade_ids_keeps_them_in_rest() -> None:
    with trio.fail_after(10):
        venue = FakeBinance(events_per_s=0)
        head = venue.market("BTCUSDT").next_trade_id
        venue.set_faults(skip_trade_ids=(head + 10, head + 19), skip_symbol="BTCUSDT")
        async with serving(venue), open_websocket_url(f"{venue.ws_url}/ws/btcusdt@trade") as ws:
            ids = [m["t"] for m in await recv_n(ws, 40)]
            expected = [i for i in range(head, head + 50) if not head + 10 <= i <= head + 19]
            assert ids == expected[:40]
            assert venue.truth.skipped_trade_ids("BTCUSDT") == list(range(head + 10, head + 20))
            assert not set(venue.truth.trade_ids("BTCUSDT")) & set(range(head + 10, head + 20))
            async with rest(venue) as client:
                r = await client.get(
                    "/api/v3/historicalTrades",
                    params={"symbol": "BTCUSDT", "fromId": head + 10, "limit": 10},
                )
                assert [t["id"] for t in r.json()] == list(range(head + 10, head + 20))


async def test_fault_duplicate_every_n_frames() -> None:
    with trio.fail_after(10):
        venue = FakeBinance(events_per_s=0, faults=BinanceFaults(duplicate_every_frames=10))
        async with serving(venue), open_websocket_url(f"{venue.ws_url}/ws/btcusdt@aggTrade") as ws:
            ids = [m["a"] for m in await recv_n(ws, 55)]
        # Frames 10, 20, ... are each followed by a copy.
        assert ids[9] == ids[10] and ids[20] == ids[21]
        assert len(ids) - len(set(ids)) == 5
        truth = venue.truth.channel("BTCUSDT", "aggTrade")
        assert truth.duplicates >= 5
        assert list(truth.ids)[:50] == sorted(set(ids))[:50]


async def test_fault_malformed_every_n_frames_cycles_kinds() -> None:
    with trio.fail_after(10):
        venue = FakeBinance(events_per_s=0, faults=BinanceFaults(malformed_every_frames=7))
        async with serving(venue), open_websocket_url(f"{venue.ws_url}/ws/btcusdt@trade") as ws:
            raw = [await ws.get_message() for _ in range(21)]
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(raw[6])
        bad_price = orjson.loads(raw[13])
        assert not DECIMAL_8.match(bad_price["p"])
        missing = orjson.loads(raw[20])
        assert "t" not in missing and missing["e"] == "trade"
        kinds = [m["kind"] for m in venue.truth.malformed_frames][:3]
        assert kinds == ["invalid_json", "bad_price", "missing_field"]
        # A corrupted frame replaced its trade: not counted as sent.
        corrupted = {m["id"] for m in list(venue.truth.malformed_frames)[:3]}
        assert not corrupted & set(venue.truth.trade_ids("BTCUSDT"))
        assert venue.truth.channel("BTCUSDT", "trade").malformed >= 3


async def test_fault_server_shutdown_after_n_frames() -> None:
    with trio.fail_after(10):
        venue = FakeBinance(events_per_s=0, faults=BinanceFaults(shutdown_after_frames=20))
        async with (
            serving(venue),
            open_websocket_url(f"{venue.ws_url}/stream?streams=btcusdt@trade") as ws,
        ):
            messages, closed = await read_until_closed(ws)
        assert len(messages) == 21
        last = orjson.loads(messages[-1])
        assert last["stream"] == "!serverShutdown" and last["data"]["e"] == "serverShutdown"
        assert code_of(closed) == 1001


async def test_server_shutdown_on_request() -> None:
    with trio.fail_after(10):
        async with (
            serving(FakeBinance(events_per_s=100)) as venue,
            open_websocket_url(f"{venue.ws_url}/ws/btcusdt@trade") as ws,
        ):
            await recv(ws)
            assert venue.request_server_shutdown() == 1
            messages, closed = await read_until_closed(ws)
            assert orjson.loads(messages[-1])["e"] == "serverShutdown"
            assert code_of(closed) == 1001
            async with rest(venue) as client:
                stats = (await client.get("/_fake/stats")).json()
            assert stats["server_shutdowns_sent"] == 1


async def test_fault_stall_keeps_socket_open() -> None:
    with trio.fail_after(10):
        faults = BinanceFaults(stall_after_frames=10, stall_s=0.5)
        async with (
            serving(FakeBinance(events_per_s=0, faults=faults)) as venue,
            open_websocket_url(f"{venue.ws_url}/ws/btcusdt@trade") as ws,
        ):
            # Gaps by the frames' send times (E, ms), not by when this test
            # reads them: a loaded machine reads frame 10 late, after part of
            # the stall has passed, and a backlog read in a burst hides a gap.
            first = await recv_n(ws, 10)
            nxt = await recv(ws)
            assert nxt["E"] - first[-1]["E"] >= 450
            assert nxt["t"] == first[-1]["t"] + 1  # nothing lost across the stall
            venue.stall(0.3)  # and at run time, for every connection
            # Frames already written may still arrive; then the gap.
            gap_ms, sent = 0, nxt["E"]
            while gap_ms < 250:
                msg = await recv(ws)
                gap_ms, sent = msg["E"] - sent, msg["E"]


async def test_faults_change_at_run_time() -> None:
    with trio.fail_after(10):
        async with (
            serving(FakeBinance(events_per_s=0)) as venue,
            open_websocket_url(f"{venue.ws_url}/ws/btcusdt@trade") as ws,
        ):
            await recv_n(ws, 5)
            venue.set_faults(disconnect_every_frames=1)
            _, closed = await read_until_closed(ws)
            assert code_of(closed) == 1006
            venue.set_faults(BinanceFaults())
            async with open_websocket_url(f"{venue.ws_url}/ws/btcusdt@trade") as ws:
                await recv_n(ws, 5)


# -- REST --------------------------------------------------------------------------------------


async def test_rest_history_matches_stream_and_paginates() -> None:
    with trio.fail_after(15):
        async with serving(FakeBinance(events_per_s=0)) as venue:
            url = f"{venue.ws_url}/stream?streams=btcusdt@trade/btcusdt@aggTrade"
            async with open_websocket_url(url) as ws:
                msgs = [m["data"] for m in await recv_n(ws, 1200)]
            trades = [m for m in msgs if m["e"] == "trade"]
            aggs = [m for m in msgs if m["e"] == "aggTrade"]
            async with rest(venue) as client:
                # historicalTrades, paged by fromId.
                got: list[Any] = []
                from_id = trades[0]["t"]
                while len(got) < len(trades):
                    r = await client.get(
                        "/api/v3/historicalTrades",
                        params={"symbol": "BTCUSDT", "fromId": from_id, "limit": 100},
                    )
                    assert r.status_code == 200
                    assert int(r.headers["X-MBX-USED-WEIGHT-1M"]) > 0
                    page = r.json()
                    got += page
                    from_id = page[-1]["id"] + 1
                for t, h in zip(trades, got, strict=False):
                    assert (h["id"], h["price"], h["qty"], h["time"], h["isBuyerMaker"]) == (
                        t["t"], t["p"], t["q"], t["T"], t["m"],
                    )  # fmt: skip
                # aggTrades by fromId.
                r = await client.get(
                    "/api/v3/aggTrades",
                    params={"symbol": "BTCUSDT", "fromId": aggs[0]["a"], "limit": len(aggs)},
                )
                assert [(a["a"], a["p"], a["q"], a["f"], a["l"]) for a in r.json()] == [
                    (a["a"], a["p"], a["q"], a["f"], a["l"]) for a in aggs
                ]
                # aggTrades by time: startTime gives the oldest from then, endTime caps.
                t0 = aggs[0]["T"]
                r = await client.get(
                    "/api/v3/aggTrades",
                    params={"symbol": "BTCUSDT", "startTime": t0, "endTime": t0, "limit": 1000},
                )
                page = r.json()
                assert page and all(a["T"] == t0 for a in page)
                assert page[0]["a"] <= aggs[0]["a"]
                r = await client.get(
                    "/api/v3/aggTrades", params={"symbol": "BTCUSDT", "endTime": t0, "limit": 3}
                )
                page = r.json()
                assert len(page) <= 3 and page[-1]["T"] <= t0
                ids = [a["a"] for a in page]
                assert ids == sorted(ids)  # chronological
                r = await client.get(
                    "/api/v3/aggTrades",
                    params={"symbol": "BTCUSDT", "fromId": 1, "startTime": t0},
                )
                assert r.status_code == 400 and r.json()["code"] == -1128
                # The newest trades, without paging.
                r = await client.get("/api/v3/trades", params={"symbol": "BTCUSDT", "limit": 5})
                newest = r.json()
                assert len(newest) == 5
                assert newest[-1]["id"] == venue.market("BTCUSDT").next_trade_id - 1


async def test_rest_429_forced_and_weight_limit() -> None:
    with trio.fail_after(10):
        venue = FakeBinance(rest_weight_limit=10, faults=BinanceFaults(rest_force_429=2))
        async with serving(venue), rest(venue) as client:
            params = {"symbol": "BTCUSDT"}
            for _ in range(2):
                r = await client.get("/api/v3/aggTrades", params=params)
                assert r.status_code == 429
                assert r.headers["Retry-After"] == "1"
                assert r.json()["code"] == -1003
                assert r.json()["msg"].startswith("Too much request weight used;")
            r = await client.get("/api/v3/aggTrades", params=params)  # weight 4
            assert r.status_code == 200 and r.headers["X-MBX-USED-WEIGHT-1M"] == "4"
            r = await client.get("/api/v3/aggTrades", params=params)
            assert r.headers["X-MBX-USED-WEIGHT-1M"] == "8"
            r = await client.get("/api/v3/aggTrades", params=params)
            assert r.status_code == 429
            assert 1 <= int(r.headers["Retry-After"]) <= 60
            assert venue.stats()["rest_429s"] == 3
            assert venue.counters["rest_429s"] == 3


async def test_rest_errors_and_reference_endpoints() -> None:
    with trio.fail_after(10):
        async with serving(FakeBinance()) as venue, rest(venue) as client:
            r = await client.get("/api/v3/aggTrades", params={"symbol": "NOPEUSDT"})
            assert r.status_code == 400 and r.json() == {"code": -1121, "msg": "Invalid symbol."}
            r = await client.get("/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "7m"})
            assert r.status_code == 400 and r.json()["code"] == -1120
            r = await client.get("/api/v3/trades", params={"symbol": "BTCUSDT", "limit": 1001})
            assert r.status_code == 400
            r = await client.get("/api/v3/exchangeInfo")
            info = r.json()
            assert [s["symbol"] for s in info["symbols"]] == ["BTCUSDT", "ETHUSDT", "BNBUSDT"]
            assert info["rateLimits"][0]["limit"] == 6000
            r = await client.get("/api/v3/exchangeInfo", params={"symbols": '["ETHUSDT"]'})
            assert [s["symbol"] for s in r.json()["symbols"]] == ["ETHUSDT"]
            r = await client.get("/api/v3/depth", params={"symbol": "BTCUSDT", "limit": 5})
            depth = r.json()
            assert len(depth["bids"]) == 5 and len(depth["asks"]) == 5
            assert Decimal(depth["bids"][0][0]) < Decimal(depth["asks"][0][0])
            assert depth["lastUpdateId"] == venue.market("BTCUSDT").book.update_id


async def test_rest_slow_responses() -> None:
    with trio.fail_after(10):
        faults = BinanceFaults(rest_delay_s=0.3, rest_chunk_delay_s=0.05)
        async with serving(FakeBinance(faults=faults)) as venue, rest(venue) as client:
            start = trio.current_time()
            r = await client.get("/api/v3/exchangeInfo")
            assert r.status_code == 200 and r.json()["symbols"]
            # 0.3 s before the head, then 512-byte pieces 0.05 s apart.
            assert trio.current_time() - start >= 0.3 + 0.05 * (len(r.content) // 512)


async def test_ground_truth_over_http() -> None:
    with trio.fail_after(10):
        async with (
            serving(FakeBinance(events_per_s=0)) as venue,
            open_websocket_url(f"{venue.ws_url}/ws/btcusdt@trade") as ws,
        ):
            ids = [m["t"] for m in await recv_n(ws, 100)]
            async with rest(venue) as client:
                r = await client.get(
                    "/_fake/sent", params={"symbol": "BTCUSDT", "channel": "trade"}
                )
                sent = r.json()
                r = await client.post("/_fake/faults", json={"rest_force_429": 1})
                assert r.json()["rest_force_429"] == 1
                r = await client.get("/api/v3/time")
                assert r.status_code == 429
        # Frames written but not yet read when the client left are part of the truth too.
        assert sent["ranges"][0][0] == ids[0] and sent["ranges"][0][1] >= ids[-1]
        assert [t[0] for t in sent["trades"][:100]] == ids
        assert sent["skipped"] == []


async def test_serve_forever_prints_urls() -> None:
    code = "import trio; from mdagent.testing.binance.venue import FakeBinance; trio.run(FakeBinance.serve_forever)"
    with trio.fail_after(20):
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", code], stdout=subprocess.PIPE
        )
        try:
            assert proc.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, "the fake exited before printing its URLs"
                line += chunk
            urls = json.loads(line)
            async with httpx.AsyncClient(base_url=urls["rest_url"]) as client:
                assert (await client.get("/api/v3/ping")).status_code == 200
            async with open_websocket_url(urls["ws_url"] + "/ws/btcusdt@trade") as ws:
                assert (await recv(ws))["e"] == "trade"
        finally:
            proc.kill()
            await proc.wait()


# -- building blocks ---------------------------------------------------------------------------


def test_text_frame_encoding_matches_wsproto() -> None:
    server = WSConnection(ConnectionType.SERVER)
    client = WSConnection(ConnectionType.CLIENT)
    server.receive_data(client.send(Request(host="x", target="/")))
    list(server.events())
    server.send(AcceptConnection())
    for size in (0, 1, 125, 126, 127, 65535, 65536, 70000):
        text = "x" * size
        assert encode_text_frame(text.encode()) == server.send(TextMessage(data=text))


def test_id_ranges() -> None:
    ids = IdRanges()
    for value in [5, 6, 7, 10, 9, 1, 8, 7]:
        ids.add(value)
    assert ids.ranges() == [(1, 1), (5, 10)]
    assert len(ids) == 7 and 8 in ids and 4 not in ids
    assert list(ids) == [1, 5, 6, 7, 8, 9, 10]


def test_format_units_is_exact() -> None:
    assert format_units(1) == "0.00000001"
    assert format_units(6_000_001_000_000) == "60000.01000000"
    assert format_units(-150_000_000) == "-1.50000000"


async def test_a_venue_process_keeps_its_history_out_of_the_cyclic_gc() -> None:
    """``mdagent fake-venue``: what lived a second is frozen out of the collector.

    The market history (tracked tuples, up to max_history trades per symbol)
    otherwise made each full collection walk all of it: the paced bench saw
    the venue stop for up to a second, holding events it had stamped.
    """
    from mdagent.bench.setup import fake_venue
    from mdagent.testing.kit import kit_for

    symbols = ["B000USDT", "B001USDT"]
    with fake_venue("binance", symbols, 0, 1) as venue:
        url = kit_for("binance").bench.receive_url(venue.ws_url, symbols)
        frames = 0
        with trio.fail_after(120):
            async with open_websocket_url(url, max_message_size=1 << 20) as ws:
                while frames < 30_000:
                    await ws.get_message()
                    frames += 1
            async with httpx.AsyncClient(base_url=venue.rest_url) as http:
                while True:
                    view = (await http.get("/_fake/gc")).json()
                    # Each of those frames left one or more tracked tuples in the history.
                    if view["tracked"] < frames // 3:
                        break
                    await trio.sleep(0.2)
    assert view["frozen"] > frames
