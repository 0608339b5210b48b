"""The fake Polygon/Massive venue, over real loopback sockets.

Clients are the real libraries (trio-websocket, httpx) and the agent's own
sans-IO parser, so "the fake speaks Polygon" is checked by the code that will
consume it. A SteppingClock makes event content *and* timestamps reproducible;
events_per_s=0 lets every test stream as fast as it reads. No sleeps: tests
synchronise on the statuses and frames themselves.
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
import trio_websocket

from mdagent.providers.polygon import (
    PolygonParser,
    parse_aggs_page,
    parse_error_body,
    parse_quotes_page,
    parse_trades_page,
)
from mdagent.records import Candle, DeadLetter, Quote, Record, StreamControl, Trade
from mdagent.testing.polygon.marketgen import (
    SteppingClock,
    StockMarket,
    StockTrade,
    encode_bar,
    encode_quote,
    encode_trade,
)
from mdagent.testing.polygon.venue import FakePolygon, PolygonFaults
from mdagent.testing.venue import serving

TICKERS = ("AAPL", "MSFT", "SPY", "GTE")
KEY = "test-key"
PARSER = PolygonParser()


def polygon(**options: Any) -> FakePolygon:
    """A FakePolygon with this module's defaults: TICKERS, unpaced, a stepping clock."""
    options.setdefault("symbols", TICKERS)
    options.setdefault("events_per_s", 0)
    options.setdefault("clock_ns", SteppingClock())
    return FakePolygon(**options)


def events_of(frame: str | bytes) -> list[dict[str, Any]]:
    parsed = json.loads(frame)
    assert isinstance(parsed, list), frame
    return parsed


async def expect_status(ws: trio_websocket.WebSocketConnection, status: str) -> str:
    events = events_of(await ws.get_message())
    assert [e["ev"] for e in events] == ["status"], events
    assert events[0]["status"] == status, events
    return str(events[0]["message"])


@asynccontextmanager
async def client(
    venue: FakePolygon, subscribe: str | None = None, key: str = KEY
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    async with trio_websocket.open_websocket_url(
        venue.ws_url, max_message_size=16 << 20, message_queue_size=64
    ) as ws:
        assert await expect_status(ws, "connected") == "Connected Successfully"
        await ws.send_message(json.dumps({"action": "auth", "params": key}))
        await expect_status(ws, "auth_success")
        if subscribe:
            await ws.send_message(json.dumps({"action": "subscribe", "params": subscribe}))
            for param in subscribe.split(","):
                assert await expect_status(ws, "success") == f"subscribed to: {param}"
        yield ws


async def data_frames(ws: trio_websocket.WebSocketConnection, count: int) -> list[str]:
    frames: list[str] = []
    while len(frames) < count:
        frame = await ws.get_message()
        assert isinstance(frame, str)
        frames.append(frame)
    return frames


async def quiesce(ws: trio_websocket.WebSocketConnection, params: str) -> None:
    """Unsubscribe and wait for the statuses: no data (and no generation) follows them,
    so the venue's history stands still for the REST checks that come next."""
    await ws.send_message(json.dumps({"action": "unsubscribe", "params": params}))
    pending = {f"unsubscribed to: {p}" for p in params.split(",")}
    while pending:
        for e in events_of(await ws.get_message()):
            if e["ev"] == "status":
                pending.discard(e["message"])


def parse_all(frames: list[str]) -> list[Record]:
    return [r for f in frames for r in PARSER.parse(f, 0)]


async def rest_get(url: str, **params: Any) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.get(url, params=params)


async def fetch_all(
    http: httpx.AsyncClient, url: str, params: dict[str, Any], ticker: str, kind: str
) -> tuple[list[Record], int]:
    """Follow next_url the way the official client does: cursor only, key as a header."""
    parse = parse_trades_page if kind == "trades" else parse_quotes_page
    headers = {"Authorization": f"Bearer {KEY}"}
    response = await http.get(url, params=params, headers=headers)
    records: list[Record] = []
    pages = 0
    while True:
        assert response.status_code == 200, response.text
        page, next_url = parse(ticker, response.content, 0)
        records += page
        pages += 1
        if next_url is None:
            return records, pages
        assert set(httpx.URL(next_url).params) == {"cursor"}
        response = await http.get(next_url, headers=headers)


# -- session flow ------------------------------------------------------------------------------


async def test_session_flow_statuses_and_unsubscribe() -> None:
    with trio.fail_after(10):
        async with serving(polygon()) as venue, client(venue) as ws:
            params = "T.AAPL,Q.*,AM.*,A.MSFT"
            await ws.send_message(json.dumps({"action": "subscribe", "params": params}))
            for param in params.split(","):
                assert await expect_status(ws, "success") == f"subscribed to: {param}"
            seen: set[tuple[str, str]] = set()
            for frame in await data_frames(ws, 40):
                for e in events_of(frame):
                    seen.add((e["ev"], e["sym"]))
            assert ("T", "AAPL") in seen and ("Q", "GTE") in seen
            assert {ev for ev, sym in seen if sym != "AAPL" and ev == "T"} == set()
            assert all(sym == "MSFT" for ev, sym in seen if ev == "A")
            await ws.send_message(json.dumps({"action": "unsubscribe", "params": "Q.*"}))
            while True:  # data already queued before the status may still arrive
                events = events_of(await ws.get_message())
                if events[0]["ev"] == "status":
                    assert events[0]["message"] == "unsubscribed to: Q.*"
                    break
            for frame in await data_frames(ws, 20):
                assert all(e["ev"] != "Q" for e in events_of(frame))


async def test_subscribe_before_auth_and_auth_failed() -> None:
    with trio.fail_after(10):
        async with (
            serving(polygon()) as venue,
            trio_websocket.open_websocket_url(venue.ws_url) as ws,
        ):
            await expect_status(ws, "connected")
            await ws.send_message(json.dumps({"action": "subscribe", "params": "T.*"}))
            await expect_status(ws, "error")
            await ws.send_message(json.dumps({"action": "auth", "params": "wrong"}))
            assert await expect_status(ws, "auth_failed") == "authentication failed"
            with pytest.raises(trio_websocket.ConnectionClosed):
                await ws.get_message()


async def test_auth_timeout_closes() -> None:
    with trio.fail_after(10):
        async with (
            serving(polygon(auth_timeout_s=0.2)) as venue,
            trio_websocket.open_websocket_url(venue.ws_url) as ws,
        ):
            await expect_status(ws, "connected")
            message = await expect_status(ws, "auth_timeout")
            assert message == "No authentication request received."
            with pytest.raises(trio_websocket.ConnectionClosed):
                await ws.get_message()
            assert venue.stats()["auth_timeout"] == 1


async def test_wrong_path_is_rejected() -> None:
    with trio.fail_after(10):
        async with serving(polygon()) as venue:
            url = venue.ws_url.replace("/stocks", "/options")
            with pytest.raises(trio_websocket.HandshakeError):
                async with trio_websocket.open_websocket_url(url):
                    pass
            async with trio_websocket.open_websocket_url(
                venue.ws_url.replace("/stocks", "/v1/stocks")
            ):
                pass  # any path ending in /stocks is the stocks cluster


async def test_one_connection_per_key() -> None:
    with trio.fail_after(10):
        async with (
            serving(polygon(extra_api_keys=("other",))) as venue,
            client(venue, "T.AAPL") as first,
        ):
            async with trio_websocket.open_websocket_url(venue.ws_url) as second:
                await expect_status(second, "connected")
                await second.send_message(json.dumps({"action": "auth", "params": KEY}))
                message = await expect_status(second, "max_connections")
                assert message.startswith("Maximum number of websocket connections exceeded")
                with pytest.raises(trio_websocket.ConnectionClosed):
                    await second.get_message()
            async with client(venue, "T.MSFT", key="other") as third:
                await data_frames(third, 1)  # another key is another account
            await data_frames(first, 2)  # the established stream is untouched


# -- stream content ----------------------------------------------------------------------------


async def test_frames_mix_events_and_parse_without_dead_letters() -> None:
    with trio.fail_after(10):
        async with serving(polygon()) as venue, client(venue, "T.*,Q.*,AM.*,A.*") as ws:
            frames = await data_frames(ws, 150)
        records = parse_all(frames)
        assert not [r for r in records if isinstance(r, DeadLetter | StreamControl)]
        kinds = Counter(type(r).__name__ for r in records)
        assert kinds["Trade"] and kinds["Quote"] and kinds["Candle"]
        sizes = [len(events_of(f)) for f in frames]
        assert min(sizes) >= 20 and max(sizes) <= 50 and len(set(sizes)) > 5
        mixed = [f for f in frames if len({(e["ev"], e["sym"]) for e in events_of(f)}) > 2]
        assert len(mixed) > len(frames) // 2
        raw = [e for f in frames for e in events_of(f)]
        trades = [e for e in raw if e["ev"] == "T"]
        assert any("c" not in e for e in trades) and any("c" in e for e in trades)
        assert any("trfi" in e and "trft" in e for e in trades)
        assert any("ds" in e for e in trades)
        assert any(re.search(r'"p":\d+\.\d{3,4}[,}]', f) for f in frames)  # sub-penny prints
        assert {e["z"] for e in trades} <= {1, 2, 3}
        assert all(isinstance(e["i"], str) for e in trades)
        quote = next(e for e in raw if e["ev"] == "Q")
        assert {"bx", "bp", "bs", "ax", "ap", "as", "t", "q", "z"} <= quote.keys()
        # The venue's own truth: WS t is the SIP ns timestamp truncated to ms.
        truth = {(t.ticker, t.natural_id): t for sym in TICKERS for t in venue.truth.trades(sym)}
        for r in records:
            if isinstance(r, Trade):
                sent = truth[r.symbol, r.trade_id]
                assert r.ts_ns == sent.sip_ns // 1_000_000 * 1_000_000
                assert r.price == sent.price_text


async def test_sequence_numbers_increase_with_gaps() -> None:
    with trio.fail_after(10):
        async with serving(polygon()) as venue, client(venue, "T.*,Q.*") as ws:
            records = parse_all(await data_frames(ws, 100))
    by_ticker: dict[str, list[int]] = defaultdict(list)
    for r in records:
        assert isinstance(r, Trade | Quote) and r.seq is not None
        by_ticker[r.symbol].append(r.seq)
    gaps = 0
    for seqs in by_ticker.values():
        assert all(b > a for a, b in zip(seqs, seqs[1:], strict=False))
        gaps += sum(1 for a, b in zip(seqs, seqs[1:], strict=False) if b - a > 1)
    assert gaps > len(records) // 3


async def test_bars_are_resent_with_corrections_and_match_rest() -> None:
    clock = SteppingClock(step_ns=40_000_000)
    with trio.fail_after(15):
        async with (
            serving(
                polygon(clock_ns=clock, late_trade_ratio=0.2, symbols=("AAPL", "MSFT"))
            ) as venue,
            client(venue, "T.*,AM.*,A.*") as ws,
        ):
            corrected: set[str] = set()
            versions: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
            while corrected != {"A", "AM"}:
                for e in events_of(await ws.get_message()):
                    if e["ev"] in ("A", "AM"):
                        key = (e["ev"], e["sym"], e["s"])
                        versions[key].append(e)
                        if len(versions[key]) > 1:
                            assert versions[key][-1] != versions[key][-2]
                            corrected.add(e["ev"])
            await quiesce(ws, "T.*,AM.*,A.*")
            async with httpx.AsyncClient() as http:
                for ticker in ("AAPL", "MSFT"):
                    sent_ids = {t.natural_id for t in venue.truth.trades(ticker)}
                    unsent = [
                        t for t in venue.market(ticker).trades if t.natural_id not in sent_ids
                    ]
                    for ev, span, length in (("AM", "minute", 60_000), ("A", "second", 1_000)):
                        bars = venue.truth.bars(ticker, ev)
                        first, last = bars[0].start_ms, bars[-1].start_ms
                        url = f"{venue.rest_url}/v2/aggs/ticker/{ticker}/range/1/{span}/{first}/{last}"
                        response = await http.get(url, params={"apiKey": KEY, "limit": 50000})
                        rest, _ = parse_aggs_page(ticker, 1, span, response.content, 0)
                        candles = [r for r in rest if isinstance(r, Candle)]
                        assert len(candles) == len(rest)
                        by_start = {r.open_ts_ns // 1_000_000: r for r in candles}
                        checked = 0
                        for bar in bars:
                            if any(bar.start_ms <= t.t_ms < bar.start_ms + length for t in unsent):
                                continue  # a late trade still in the log, never sent
                            r = by_start[bar.start_ms]
                            b = bar.bar
                            assert (r.open, r.high, r.low, r.close, r.vwap, r.trade_count) == (
                                b.open,
                                b.high,
                                b.low,
                                b.close,
                                b.vwap,
                                b.n,
                            )
                            assert r.volume == b.volume_text
                            checked += 1
                        # Bars holding a late trade that is still unsent are skipped;
                        # with only two minute bars one of them may be such a bar.
                        assert checked >= max(1, len(bars) // 2)


# -- REST --------------------------------------------------------------------------------------


async def test_rest_pagination_asc_and_desc() -> None:
    with trio.fail_after(15):
        async with serving(polygon()) as venue, client(venue, "T.*,Q.*") as ws:
            await data_frames(ws, 60)
            await quiesce(ws, "T.*,Q.*")
            async with httpx.AsyncClient() as http:
                for kind in ("trades", "quotes"):
                    market = venue.market("AAPL")
                    history = market.trades if kind == "trades" else market.quotes
                    lo, hi = history[5].sip_ns, history[min(len(history) - 5, 120)].sip_ns
                    url = f"{venue.rest_url}/v3/{kind}/AAPL"
                    params = {"timestamp.gte": lo, "timestamp.lt": hi, "limit": 7}
                    expected = [h.sip_ns for h in history if lo <= h.sip_ns < hi]
                    asc, pages = await fetch_all(
                        http, url, {**params, "order": "asc"}, "AAPL", kind
                    )
                    assert [r.ts_ns for r in asc] == expected  # type: ignore[union-attr]
                    assert pages == -(-len(expected) // 7)
                    desc, _ = await fetch_all(http, url, params, "AAPL", kind)  # default: desc
                    assert [r.ts_ns for r in desc] == expected[::-1]  # type: ignore[union-attr]
                    exact = await http.get(url, params={"timestamp": lo, "apiKey": KEY})
                    [one] = (
                        parse_trades_page("AAPL", exact.content, 0)[0]
                        if kind == "trades"
                        else (parse_quotes_page("AAPL", exact.content, 0)[0])
                    )
                    assert one.ts_ns == lo  # type: ignore[union-attr]
                empty = await http.get(
                    f"{venue.rest_url}/v3/trades/AAPL",
                    params={"timestamp": "2001-01-01", "apiKey": KEY},
                )
                assert empty.json()["status"] == "OK" and "results" not in empty.json()


async def test_rest_trades_equal_ws_trades_with_exact_ns() -> None:
    with trio.fail_after(15):
        async with serving(polygon()) as venue, client(venue, "T.*") as ws:
            frames = await data_frames(ws, 40)
            await quiesce(ws, "T.*")
            ws_trades = [r for r in parse_all(frames) if isinstance(r, Trade)]
            async with httpx.AsyncClient() as http:
                for ticker in TICKERS:
                    url = f"{venue.rest_url}/v3/trades/{ticker}"
                    params: dict[str, str | int] = {"order": "asc", "limit": 50000, "apiKey": KEY}
                    response = await http.get(url, params=params)
                    stamps = [
                        int(s) for s in re.findall(rb'"sip_timestamp":(\d+)', response.content)
                    ]
                    history = venue.market(ticker).trades
                    assert stamps == [t.sip_ns for t in history]
                    assert all(s > 2**53 for s in stamps)
                    assert any(s % 1000 for s in stamps)  # not float-rounded
                    records, _ = parse_trades_page(ticker, response.content, 0)
                    rest = {r.trade_id: r for r in records if isinstance(r, Trade)}
                    for w in (t for t in ws_trades if t.symbol == ticker):
                        r = rest[w.trade_id]
                        assert r.ts_ns // 1_000_000 * 1_000_000 == w.ts_ns
                        for field in ("price", "size", "seq", "exchange", "tape", "trf_id"):
                            assert getattr(r, field) == getattr(w, field), field
                        assert r.conditions == w.conditions
    fractional = [w for w in ws_trades if "." in w.size]
    assert fractional  # decimal_size and ds agree on fractional sizes too


async def test_rest_errors_401_400_and_forced_429() -> None:
    with trio.fail_after(10):
        async with serving(polygon()) as venue:
            url = f"{venue.rest_url}/v3/trades/AAPL"
            wrong = await rest_get(url, apiKey="nope")
            assert wrong.status_code == 401
            assert wrong.json() == {"status": "ERROR", "error": "Unknown API Key"}
            assert (await rest_get(url)).status_code == 401
            for bad in ({"limit": 50001}, {"limit": "x"}, {"order": "up"}, {"timestamp.gte": "x"}):
                response = await rest_get(url, apiKey=KEY, **bad)
                assert response.status_code == 400, bad
                body = response.json()
                assert body["status"] == "ERROR" and body["request_id"] and body["error"]
            tampered = base64.urlsafe_b64encode(b'{"k":"trades","t":"AAPL","o":"asc"}').decode()
            for cursor in ("garbage", tampered):
                assert (await rest_get(url, apiKey=KEY, cursor=cursor)).status_code == 400
            venue.set_faults(PolygonFaults(rest_force_429=2, rest_retry_after_s=3))
            for _ in range(2):
                limited = await rest_get(url, apiKey=KEY)
                assert limited.status_code == 429
                assert limited.headers["retry-after"] == "3"
                assert "exceeded the maximum requests per minute" in (
                    parse_error_body(limited.content) or ""
                )
            assert (await rest_get(url, apiKey=KEY)).status_code == 200
            assert venue.counters["rest_429s"] == 2


async def test_free_tier_limit() -> None:
    with trio.fail_after(10):
        async with serving(polygon(free_tier=True, free_tier_limit=3)) as venue:
            url = f"{venue.rest_url}/v3/quotes/MSFT"
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}) as http:
                codes = [(await http.get(url)).status_code for _ in range(3)]
                limited = await http.get(url)
            assert codes == [200, 200, 200]
            assert limited.status_code == 429
            assert 1 <= int(limited.headers["retry-after"]) <= 60
            assert limited.json()["error"].startswith("You've exceeded the maximum requests")


async def test_fake_endpoints_report_ground_truth() -> None:
    with trio.fail_after(10):
        async with serving(polygon()) as venue, client(venue, "T.AAPL") as ws:
            records = parse_all(await data_frames(ws, 3))
            sent = await rest_get(f"{venue.rest_url}/_fake/sent", ticker="AAPL", ev="T")
            stats = await rest_get(f"{venue.rest_url}/_fake/stats")
    body = sent.json()
    assert body["count"] >= len(records)
    ids = {e["natural_id"] for e in body["events"]}
    assert {r.trade_id for r in records if isinstance(r, Trade)} <= ids
    assert stats.json()["frames_sent"] >= 3


# -- faults ------------------------------------------------------------------------------------


@pytest.mark.parametrize("abort", [False, True])
async def test_fault_disconnect_every_frames(abort: bool) -> None:
    faults = PolygonFaults(disconnect_every_frames=5, disconnect_abort=abort)
    with trio.fail_after(10):
        async with serving(polygon(faults=faults)) as venue, client(venue, "T.*,Q.*") as ws:
            await data_frames(ws, 5)
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await ws.get_message()
    reason = closed.value.reason
    assert reason is not None and reason.code == (1006 if abort else 1001)
    assert venue.stats()["fault_disconnects"] == 1


async def test_fault_skip_events_kept_for_rest() -> None:
    faults = PolygonFaults(skip_after_events=50, skip_events=30)
    with trio.fail_after(10):
        async with serving(polygon(faults=faults)) as venue, client(venue, "T.*,Q.*") as ws:
            received = [r for r in parse_all(await data_frames(ws, 10))]
    skipped = [t for sym in TICKERS for t in venue.truth.trades(sym, skipped=True)]
    skipped_quotes = [q for sym in TICKERS for q in venue.truth.quotes(sym, skipped=True)]
    assert len(skipped) + len(skipped_quotes) == 30
    got_ids = {r.trade_id for r in received if isinstance(r, Trade)}
    assert not got_ids & {t.natural_id for t in skipped}
    got_seqs = {(r.symbol, r.seq) for r in received if isinstance(r, Quote)}
    assert not got_seqs & {(q.ticker, q.seq) for q in skipped_quotes}
    assert len(received) >= 50  # the 50 before the skip, then the stream goes on
    for trade in skipped:
        assert trade in venue.market(trade.ticker).trades  # REST still has it


async def test_fault_duplicate_frames() -> None:
    with trio.fail_after(10):
        async with (
            serving(polygon(faults=PolygonFaults(duplicate_every_frames=3))) as venue,
            client(venue, "Q.*") as ws,
        ):
            frames = await data_frames(ws, 8)
    # Data frames 3 and 6 are each sent twice, back to back.
    assert frames[2] == frames[3] and frames[6] == frames[7]
    assert len(set(frames)) == 6
    assert venue.stats()["duplicate_frames"] >= 2


async def test_fault_malformed_elements_and_garbage_frames() -> None:
    with trio.fail_after(10):
        async with (
            serving(polygon(faults=PolygonFaults(malformed_every_frames=2))) as venue,
            client(venue, "T.*,Q.*") as ws,
        ):
            frames = await data_frames(ws, 20)
    # Every 2nd data frame carries a bad element; every 4th injection is a
    # separate non-JSON frame instead: messages 2, 4, 6 bad, 8 garbage, 9 clean, ...
    expected, messages, number = 0, 0, 0
    while messages < len(frames):
        number += 1
        messages += 1
        if number % 2 == 0:
            expected += 1
            if number % 8 == 0 and messages < len(frames):
                messages += 1  # the garbage frame went first; this data frame is intact
    records = parse_all(frames)
    dead = [r for r in records if isinstance(r, DeadLetter)]
    assert len(dead) == expected
    assert venue.truth.malformed[: len(dead)] == [d.payload for d in dead]
    assert any("not a JSON array" in d.reason for d in dead)
    assert any("p" in d.reason for d in dead if d.source == "T")
    assert any("sym" in d.reason for d in dead if d.source == "Q")
    good = [r for r in records if not isinstance(r, DeadLetter)]
    sent = sum(len(venue.truth.trades(s)) + len(venue.truth.quotes(s)) for s in TICKERS)
    assert len(good) <= sent and len(good) > 0


async def test_fault_stall() -> None:
    faults = PolygonFaults(stall_after_frames=3, stall_s=0.3)
    with trio.fail_after(10):
        async with serving(polygon(faults=faults)) as venue, client(venue, "T.*") as ws:
            # From before the third frame is sent (unpaced, the four come in
            # milliseconds without the stall): a loaded machine that reads the
            # third late cannot shorten what is measured.
            start = trio.current_time()
            await data_frames(ws, 3)
            await data_frames(ws, 1)
            assert trio.current_time() - start >= 0.29
            await data_frames(ws, 3)  # once per connection
    assert venue.stats()["stalls"] == 1


# -- determinism and pace ----------------------------------------------------------------------


async def _first_frames(seed: int) -> list[str]:
    async with serving(polygon(seed=seed)) as venue, client(venue, "T.*,Q.*,AM.*,A.*") as ws:
        return await data_frames(ws, 30)


async def test_deterministic_per_seed() -> None:
    with trio.fail_after(15):
        one, two, other = await _first_frames(7), await _first_frames(7), await _first_frames(8)
    assert one == two
    assert one != other


def test_bulk_run_equals_steps() -> None:
    """The venue generates in bulk (``run``); the tape is the one ``step`` makes."""
    tickers = ["AAPL", "SPY", "TK001", "TK002"]
    # Starts 3 s before midnight in New York (EST: 05:00 UTC): sequence
    # numbers restart on the way, as they do per New York trading session.
    start = 86_400 * 10**9 * 19_700 + 5 * 3_600 * 10**9 - 3 * 10**9
    stepped = StockMarket(tickers, 5, clock_ns=SteppingClock(start, 50_000), late_ratio=0.1)
    bulk = StockMarket(tickers, 5, clock_ns=SteppingClock(start, 50_000), late_ratio=0.1)
    one_by_one = [e for _ in range(120_000) for e in stepped.step()]
    together: list[Any] = []
    bulk.run(together, 100_000)
    bulk.run(together, 20_000)
    assert [(e.ev, e.ticker, e.text) for e in together] == [
        (e.ev, e.ticker, e.text) for e in one_by_one
    ]
    assert [e.item for e in together] == [e.item for e in one_by_one]
    assert {e.ev for e in one_by_one} == {"T", "Q", "A", "AM"}
    for ticker in tickers:
        assert bulk.markets[ticker].trades == stepped.markets[ticker].trades
        seqs = [q.seq for q in stepped.markets[ticker].quotes]
        assert min(b - a for a, b in zip(seqs, seqs[1:], strict=False)) < 0  # a new day began
    # The text of each event is what the stand-alone encoders make of its value.
    encoders: dict[str, Callable[[Any], str]] = {
        "T": encode_trade,
        "Q": encode_quote,
        "A": encode_bar,
        "AM": encode_bar,
    }
    assert all(encoders[e.ev](e.item) == e.text for e in together)


async def test_paced_stream() -> None:
    with trio.fail_after(10):
        async with serving(polygon(events_per_s=2000, events_per_frame=20)) as venue:
            # From before the subscription (where the venue's pace starts): a
            # loaded machine's late start would shorten what is measured.
            start = trio.current_time()
            async with client(venue, "Q.*") as ws:
                frames = await data_frames(ws, 11)  # 220 events: the last due after ~0.1 s
                elapsed = trio.current_time() - start
    assert all(len(events_of(f)) == 20 for f in frames)
    assert elapsed >= 0.09


async def test_paced_connections_splitting_the_tickers_move_through_the_tape_together() -> None:
    """Two paced connections, one with the least active ticker, one with the rest: each
    sends its events about when the market made them, whichever pull generated them.

    A stepping clock of one ms per generated event makes a stamp a position on
    the shared tape. Paced on its own events, the sparse connection ran
    through the tape several times faster than the dense one, which then sent
    events stamped long before (``bench --workers 2``: p99 9 s).
    """
    venue = polygon(
        events_per_s=4000,
        clock_ns=SteppingClock(step_ns=1_000_000),
        extra_api_keys=("key-2",),
        late_trade_ratio=0,
    )
    quiet = min(TICKERS, key=lambda t: venue.market(t).activity)
    busy = [t for t in TICKERS if t != quiet]
    newest = {"sparse": 0, "dense": 0}
    first_dense: list[int] = []
    dense_events = 0

    async def read_sparse(ws: trio_websocket.WebSocketConnection) -> None:
        while True:
            for e in events_of(await ws.get_message()):
                newest["sparse"] = max(newest["sparse"], e["t"])

    with trio.fail_after(60):
        async with (
            serving(venue),
            client(venue, f"T.{quiet},Q.{quiet}") as sparse,
            client(venue, ",".join(f"T.{t},Q.{t}" for t in busy), key="key-2") as dense,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(read_sparse, sparse)
            while dense_events < 4000:
                events = events_of(await dense.get_message())
                dense_events += len(events)
                stamps = [e["t"] for e in events]
                first_dense[:] = first_dense or stamps[:1]
                newest["dense"] = max(newest["dense"], *stamps)
            nursery.cancel_scope.cancel()
    dense_progress = newest["dense"] - first_dense[0]
    # Apart by at most about a frame of the sparse connection (<= 50 of its
    # events): far less than half of what the dense one went through.
    assert abs(newest["sparse"] - newest["dense"]) < dense_progress / 2, (newest, dense_progress)


def test_trade_natural_id_matches_parser() -> None:
    trade = StockTrade(
        "AAPL", 1, 2, 1, 4, 202, 2, "77", 1_000_000, "100", 1_000_000, "1", None, 3, False
    )
    assert trade.natural_id == "4:202:77"


async def test_fault_max_connection_age_and_disconnect_reasons() -> None:
    faults = PolygonFaults(max_connection_age_s=1)
    with trio.fail_after(10):
        async with serving(polygon(faults=faults, events_per_s=200)) as venue:
            async with client(venue, "T.AAPL") as ws:
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    while True:
                        await ws.get_message()
            reason = closed.value.reason
            assert reason is not None and (reason.code, reason.reason) == (
                1001,
                "Connection age limit",
            )
            venue.set_faults(max_connection_age_s=None)
            async with client(venue, "T.AAPL") as ws:
                await data_frames(ws, 2)
            await wait_all_closed(venue)
            assert venue.stats()["disconnect_reasons"] == {
                "Connection age limit": 1,
                "client closed": 1,
            }


async def wait_all_closed(venue: FakePolygon) -> None:
    while venue.stats()["connections_open"]:
        await trio.sleep(0.01)


async def test_fault_silent_stream_stays_subscribed_until_subscribed_again() -> None:
    with trio.fail_after(10):
        async with serving(polygon()) as venue, client(venue, "T.AAPL,T.MSFT") as ws:
            venue.set_faults(silent_streams=("T.AAPL",))
            await quiesce_until_only(ws, {"MSFT"})
            # Subscribed again with the fault's restore switch on: AAPL comes back.
            venue.set_faults(silent_until_resubscribed=True)
            await ws.send_message(json.dumps({"action": "subscribe", "params": "T.AAPL"}))
            seen: set[str] = set()
            while "AAPL" not in seen:
                seen |= {e.get("sym", "") for e in events_of(await ws.get_message())}


async def quiesce_until_only(ws: trio_websocket.WebSocketConnection, tickers: set[str]) -> None:
    """Read until 20 frames in a row carry only ``tickers`` (frames queued before the
    fault may still hold others)."""
    clean = 0
    while clean < 20:
        syms = {e["sym"] for e in events_of(await ws.get_message()) if e["ev"] != "status"}
        clean = clean + 1 if syms <= tickers else 0


async def test_at_max_rate_the_venue_serves_as_fast_as_its_slowest_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two unpaced connections share the tape: the faster one waits for the slower
    instead of running ahead until the slower falls out of the backlog and is
    dropped as a slow consumer (bounds shrunk so that takes seconds, not millions)."""
    from mdagent.testing.polygon import venue as venue_module

    monkeypatch.setattr(venue_module, "_MAX_BACKLOG", 20_000)
    monkeypatch.setattr(venue_module, "_TRIM_AT", 4_096)
    monkeypatch.setattr(venue_module, "_MAX_LEAD", 5_000, raising=False)
    slow_events = 0
    async with (
        serving(polygon(extra_api_keys=("slow-key",))) as venue,
        client(venue, "T.AAPL,Q.AAPL,T.MSFT,Q.MSFT") as fast,
        client(venue, "T.SPY,Q.SPY,T.GTE,Q.GTE", key="slow-key") as slow,
    ):

        async def read_slowly() -> None:
            nonlocal slow_events
            while True:
                slow_events += len(events_of(await slow.get_message()))
                await trio.sleep(0.002)  # a few times slower than the fast one

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_slowly)
            fast_events = 0
            with trio.fail_after(120):
                # Well past the backlog plus what socket buffers hold (MBs).
                while fast_events < 120_000:
                    fast_events += len(events_of(await fast.get_message()))
            nursery.cancel_scope.cancel()
        assert venue.counters["slow_consumer_disconnects"] == 0
        assert slow_events > 0
