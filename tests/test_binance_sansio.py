"""Binance sans-IO adapter: frames and REST pages in, canonical records out.

Fixtures are the payload shapes documented in docs/wire-formats.md section 1,
wrapped the way a combined-stream connection delivers them.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdagent.providers.binance import sansio
from mdagent.providers.binance.sansio import (
    BinanceParser,
    combined_stream_url,
    list_subscriptions_message,
    parse_agg_trades_page,
    parse_error_body,
    parse_historical_trades_page,
    parse_klines_page,
    stream_name,
    subscribe_message,
    unsubscribe_message,
)
from mdagent.records import Candle, DeadLetter, Quote, Record, StreamControl, Trade

RECV = 1_700_000_000_123_456_789

TRADE = {
    "e": "trade",
    "E": 1672515782136,
    "s": "BNBBTC",
    "t": 12345,
    "p": "0.001",
    "q": "100",
    "T": 1672515782136,
    "m": True,
    "M": True,
}
AGG_TRADE = {
    "e": "aggTrade",
    "E": 1672515782136,
    "s": "BNBBTC",
    "a": 12345,
    "p": "0.001",
    "q": "100",
    "f": 100,
    "l": 105,
    "T": 1672515782136,
    "m": True,
    "M": True,
}
BOOK_TICKER = {
    "u": 400900217,
    "s": "BNBUSDT",
    "b": "25.35190000",
    "B": "31.21000000",
    "a": "25.36520000",
    "A": "40.66000000",
}
KLINE = {
    "e": "kline",
    "E": 1672515782136,
    "s": "BNBBTC",
    "k": {
        "t": 1672515780000,
        "T": 1672515839999,
        "s": "BNBBTC",
        "i": "1m",
        "f": 100,
        "L": 200,
        "o": "0.0010",
        "c": "0.0020",
        "h": "0.0025",
        "l": "0.0015",
        "v": "1000",
        "n": 100,
        "x": False,
        "q": "1.0000",
        "V": "500",
        "Q": "0.500",
        "B": "123456",
    },
}

STREAM_OF = {
    "trade": ("bnbbtc@trade", TRADE),
    "aggTrade": ("bnbbtc@aggTrade", AGG_TRADE),
    "bookTicker": ("bnbusdt@bookTicker", BOOK_TICKER),
    "kline": ("bnbbtc@kline_1m", KLINE),
}

REST_HISTORICAL_TRADES = (
    b'[{"id":28457,"price":"4.00000100","qty":"12.00000000","quoteQty":"48.000012",'
    b'"time":1499865549590,"isBuyerMaker":true,"isBestMatch":true}]'
)
REST_AGG_TRADES = (
    b'[{"a":26129,"p":"0.01633102","q":"4.70443515","f":27781,"l":27781,'
    b'"T":1498793709153,"m":true,"M":true}]'
)
REST_KLINES = (
    b'[[1499040000000,"0.01634790","0.80000000","0.01575800","0.01577100",'
    b'"148976.11427815",1499644799999,"2434.19055334",308,"1756.87402397",'
    b'"28.46694368","0"]]'
)


def wrap(stream: str, data: Any) -> bytes:
    return json.dumps({"stream": stream, "data": data}, separators=(",", ":")).encode()


def parse_one(frame: bytes | str, parser: BinanceParser | None = None) -> Record:
    records = (parser or BinanceParser()).parse(frame, RECV)
    assert len(records) == 1
    return records[0]


def dead_letter(frame: bytes | str) -> DeadLetter:
    record = parse_one(frame)
    assert isinstance(record, DeadLetter), record
    assert record.provider == "binance"
    assert record.received_ns == RECV
    assert record.payload == (frame if isinstance(frame, str) else frame.decode())
    return record


# --- stream names and control messages --------------------------------------


@pytest.mark.parametrize(
    ("symbol", "channel", "expected"),
    [
        ("BTCUSDT", "trade", "btcusdt@trade"),
        ("btcusdt", "aggTrade", "btcusdt@aggTrade"),
        ("BnbUsdt", "bookTicker", "bnbusdt@bookTicker"),
        ("ETHBTC", "kline_1m", "ethbtc@kline_1m"),
    ],
)
def test_stream_name(symbol: str, channel: str, expected: str) -> None:
    assert stream_name(symbol, channel) == expected


@pytest.mark.parametrize(
    "ws_url", ["wss://data-stream.binance.vision", "wss://data-stream.binance.vision/"]
)
def test_combined_stream_url(ws_url: str) -> None:
    url = combined_stream_url(ws_url, ["btcusdt@trade", "btcusdt@kline_1m", "ethusdt@bookTicker"])
    assert url == (
        "wss://data-stream.binance.vision/stream"
        "?streams=btcusdt@trade/btcusdt@kline_1m/ethusdt@bookTicker"
    )


def test_combined_stream_url_microseconds() -> None:
    url = combined_stream_url("ws://127.0.0.1:9000", ["btcusdt@trade"], time_unit="us")
    assert url == "ws://127.0.0.1:9000/stream?streams=btcusdt@trade&timeUnit=MICROSECOND"


def test_combined_stream_url_needs_streams() -> None:
    with pytest.raises(ValueError, match="at least one stream"):
        combined_stream_url("wss://x", [])


def test_control_messages() -> None:
    assert json.loads(subscribe_message(["btcusdt@aggTrade", "btcusdt@depth"], 1)) == {
        "method": "SUBSCRIBE",
        "params": ["btcusdt@aggTrade", "btcusdt@depth"],
        "id": 1,
    }
    assert json.loads(unsubscribe_message(("btcusdt@depth",), 312)) == {
        "method": "UNSUBSCRIBE",
        "params": ["btcusdt@depth"],
        "id": 312,
    }
    assert json.loads(list_subscriptions_message("req3")) == {
        "method": "LIST_SUBSCRIPTIONS",
        "id": "req3",
    }


def test_unknown_time_unit_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="time_unit"):
        BinanceParser(time_unit="s")  # type: ignore[arg-type]


# --- every channel ----------------------------------------------------------


def test_trade() -> None:
    assert parse_one(wrap("bnbbtc@trade", TRADE)) == Trade(
        provider="binance",
        symbol="BNBBTC",
        channel="trade",
        trade_id="12345",
        seq=12345,
        ts_ns=1672515782136_000_000,
        price="0.001",
        size="100",
        received_ns=RECV,
        is_buyer_maker=True,
    )


def test_agg_trade() -> None:
    assert parse_one(wrap("bnbbtc@aggTrade", AGG_TRADE)) == Trade(
        provider="binance",
        symbol="BNBBTC",
        channel="aggTrade",
        trade_id="12345",
        seq=12345,
        ts_ns=1672515782136_000_000,
        price="0.001",
        size="100",
        received_ns=RECV,
        is_buyer_maker=True,
        first_trade_id=100,
        last_trade_id=105,
    )


def test_book_ticker_is_routed_by_stream_name_and_stamped_with_receive_time() -> None:
    assert parse_one(wrap("bnbusdt@bookTicker", BOOK_TICKER)) == Quote(
        provider="binance",
        symbol="BNBUSDT",
        channel="bookTicker",
        seq=400900217,
        ts_ns=RECV,
        bid_price="25.35190000",
        bid_size="31.21000000",
        ask_price="25.36520000",
        ask_size="40.66000000",
        received_ns=RECV,
    )


@pytest.mark.parametrize("closed", [False, True])
def test_kline(closed: bool) -> None:
    data = json.loads(json.dumps(KLINE))
    data["k"]["x"] = closed
    assert parse_one(wrap("bnbbtc@kline_1m", data)) == Candle(
        provider="binance",
        symbol="BNBBTC",
        channel="kline_1m",
        interval="1m",
        open_ts_ns=1672515780000_000_000,
        close_ts_ns=1672515839999_000_000,
        open="0.0010",
        high="0.0025",
        low="0.0015",
        close="0.0020",
        volume="1000",
        received_ns=RECV,
        final=closed,
        event_ts_ns=1672515782136_000_000,
        quote_volume="1.0000",
        trade_count=100,
    )


@pytest.mark.parametrize("interval", ["1s", "1h", "1M"])
def test_kline_intervals(interval: str) -> None:
    data = json.loads(json.dumps(KLINE))
    data["k"]["i"] = interval
    candle = parse_one(wrap(f"bnbbtc@kline_{interval}", data))
    assert isinstance(candle, Candle)
    assert (candle.channel, candle.interval) == (f"kline_{interval}", interval)


def test_microsecond_connection_scales_every_time_field() -> None:
    parser = BinanceParser(time_unit="us")
    trade = {**TRADE, "T": 1672515782136123}
    record = parse_one(wrap("bnbbtc@trade", trade), parser)
    assert isinstance(record, Trade)
    assert record.ts_ns == 1672515782136123_000
    kline = json.loads(json.dumps(KLINE))
    kline["E"], kline["k"]["t"], kline["k"]["T"] = (
        1672515782136001,
        1672515780000000,
        1672515839999999,
    )
    candle = parse_one(wrap("bnbbtc@kline_1m", kline), parser)
    assert isinstance(candle, Candle)
    assert (candle.open_ts_ns, candle.close_ts_ns, candle.event_ts_ns) == (
        1672515780000000_000,
        1672515839999999_000,
        1672515782136001_000,
    )


def test_text_frames_parse_like_bytes() -> None:
    frame = wrap("bnbbtc@trade", TRADE)
    assert parse_one(frame.decode()) == parse_one(frame)


def test_unused_and_new_fields_are_ignored() -> None:
    # Binance adds fields over time; M is documented as "ignore".
    trade = {**TRADE, "X": "MARKET", "b": 88}
    del trade["M"], trade["E"], trade["e"]
    assert isinstance(parse_one(wrap("bnbbtc@trade", trade)), Trade)


# --- connection messages ----------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        b'{"e":"serverShutdown","E":1770123456789}',
        b'{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1770123456789}}',
    ],
)
def test_server_shutdown(frame: bytes) -> None:
    assert parse_one(frame) == StreamControl(provider="binance", kind="server_shutdown")


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b'{"result":null,"id":1}', "null"),
        (b'{"result":["btcusdt@aggTrade"],"id":3}', '["btcusdt@aggTrade"]'),
        (b'{"result":null,"id":"abc-36"}', "null"),
    ],
)
def test_control_reply(frame: bytes, message: str) -> None:
    assert parse_one(frame) == StreamControl(provider="binance", kind="subscribed", message=message)


@pytest.mark.parametrize(
    "frame",
    [
        b'{"code":2,"msg":"Invalid request: unknown method"}',
        # What the live servers send (wrapped), as opposed to the documented flat form.
        b'{"error":{"code":2,"msg":"Invalid request: unknown method"},"id":2}',
    ],
)
def test_error_reply(frame: bytes) -> None:
    assert parse_one(frame) == StreamControl(
        provider="binance", kind="error", status="2", message="Invalid request: unknown method"
    )


# --- malformed input --------------------------------------------------------


def with_field(kind: str, path: str, value: Any) -> bytes:
    """The fixture frame of ``kind`` with ``path`` ("p", "k.o") set, or deleted if value is DELETE."""
    stream, fixture = STREAM_OF[kind]
    data = json.loads(json.dumps(fixture))
    *parents, leaf = path.split(".")
    target = data
    for key in parents:
        target = target[key]
    if value is DELETE:
        del target[leaf]
    else:
        target[leaf] = value
    return wrap(stream, data)


DELETE = object()

BAD_DECIMALS = [
    "",
    "1e400",
    "1E-41",
    "1" * 41,
    "NaN",
    "Infinity",
    "-1",
    "+1",
    ".5",
    "5.",
    "1.2.3",
    " 1",
    "1\n",
]
BAD_DECIMALS += ["1,5", "0x10", "\u0661", "\u00b2", "1_000"]


@pytest.mark.parametrize("bad", BAD_DECIMALS)
def test_price_must_be_a_plain_decimal_string(bad: str) -> None:
    letter = dead_letter(with_field("trade", "p", bad))
    assert letter.source == "bnbbtc@trade"
    assert letter.reason.startswith("data.p (price): expected a decimal string")


@pytest.mark.parametrize(
    ("literal", "stored"),
    [
        ("1e-8", "0.00000001"),
        ("1.5E+3", "1500"),
        ("2.50e1", "25.0"),
        ("-0", "0"),
        ("1" * 40, "1" * 40),
    ],
)
def test_price_in_any_exponent_form_keeps_its_exact_value(literal: str, stored: str) -> None:
    # mdagent.numbers: any JSON-number spelling within 40 digits and exponent +-40.
    (record,) = BinanceParser().parse(with_field("trade", "p", literal), RECV)
    assert isinstance(record, Trade)
    assert record.price == stored


@pytest.mark.parametrize("bad", [0.001, 100, None, True, ["0.001"], {"v": "1"}])
def test_price_must_not_be_a_json_number_or_other_type(bad: Any) -> None:
    letter = dead_letter(with_field("trade", "p", bad))
    assert letter.reason.startswith("data.p (price): expected a decimal string")


# Every DecimalStr field of every channel, by wire path and attribute name.
DECIMAL_FIELDS = [
    ("trade", "p", "price"),
    ("trade", "q", "qty"),
    ("aggTrade", "p", "price"),
    ("aggTrade", "q", "qty"),
    ("bookTicker", "b", "bid_price"),
    ("bookTicker", "B", "bid_qty"),
    ("bookTicker", "a", "ask_price"),
    ("bookTicker", "A", "ask_qty"),
    ("kline", "k.o", "open"),
    ("kline", "k.h", "high"),
    ("kline", "k.l", "low"),
    ("kline", "k.c", "close"),
    ("kline", "k.v", "volume"),
    ("kline", "k.q", "quote_volume"),
]


@pytest.mark.parametrize(("kind", "path", "name"), DECIMAL_FIELDS)
@pytest.mark.parametrize("bad", ["1e41", 1.5])
def test_every_decimal_field_is_checked(kind: str, path: str, name: str, bad: Any) -> None:
    letter = dead_letter(with_field(kind, path, bad))
    assert letter.source == STREAM_OF[kind][0]
    assert letter.reason.startswith(f"data.{path} ({name}): expected a decimal string")


@pytest.mark.parametrize(
    ("kind", "path", "value", "reason"),
    [
        ("trade", "t", DELETE, "data.t (trade_id): missing"),
        ("trade", "t", "12345", "data.t (trade_id): expected an integer, got string '12345'"),
        ("trade", "t", 12345.5, "data.t (trade_id): expected an integer (must be a whole number"),
        ("trade", "t", -1, "data.t (trade_id): expected an integer >= 0, got number -1"),
        ("trade", "t", 2**63, "data.t (trade_id): expected an integer <= 9223372036854775807"),
        ("trade", "t", True, "data.t (trade_id): expected an integer, got boolean True"),
        ("trade", "T", None, "data.T (trade_time): expected an integer, got null None"),
        ("trade", "m", 1, "data.m (buyer_is_maker): expected true or false, got number 1"),
        ("trade", "m", "true", "data.m (buyer_is_maker): expected true or false"),
        ("trade", "s", DELETE, "data.s (symbol): missing"),
        ("trade", "s", 7, "data.s (symbol): expected a string, got number 7"),
        ("trade", "s", "ETHBTC", "data.s: symbol 'ETHBTC' does not match stream symbol 'BNBBTC'"),
        ("trade", "s", "bnbbtc", "data.s: symbol 'bnbbtc' does not match stream symbol 'BNBBTC'"),
        ("aggTrade", "a", DELETE, "data.a (agg_id): missing"),
        ("aggTrade", "f", "100", "data.f (first_trade_id): expected an integer"),
        ("aggTrade", "l", None, "data.l (last_trade_id): expected an integer"),
        ("bookTicker", "u", -5, "data.u (update_id): expected an integer >= 0"),
        ("bookTicker", "s", "ETHUSDT", "data.s: symbol 'ETHUSDT' does not match"),
        ("kline", "k", DELETE, "data.k (bar): missing"),
        ("kline", "k", [], "data.k: expected an object, got array []"),
        ("kline", "E", DELETE, "data.E (event_time): missing"),
        ("kline", "k.t", "x", "data.k.t (open_time): expected an integer"),
        ("kline", "k.x", None, "data.k.x (closed): expected true or false"),
        ("kline", "k.n", 1.5, "data.k.n (trade_count): expected an integer (must be a whole"),
        ("kline", "k.s", "ETHBTC", "data.k.s: symbol 'ETHBTC' does not match stream symbol"),
        ("kline", "k.i", "5m", "data.k.i: interval '5m' does not match stream interval '1m'"),
    ],
)
def test_bad_field_is_named(kind: str, path: str, value: Any, reason: str) -> None:
    letter = dead_letter(with_field(kind, path, value))
    assert letter.source == STREAM_OF[kind][0]
    assert letter.reason.startswith(reason), letter.reason


@pytest.mark.parametrize(
    ("frame", "source", "reason"),
    [
        (b"", "?", "frame: not valid JSON"),
        (b"not json", "?", "frame: not valid JSON"),
        (b'{"stream":"bnbbtc@trade","data":{', "?", "frame: not valid JSON"),
        (b'{"stream":"bnbbtc@trade","data":{"p":NaN}}', "?", "frame: not valid JSON"),
        (b"[1,2]", "?", "frame: expected a JSON object, got array [1, 2]"),
        (b"[1,2", "?", "frame: not valid JSON"),
        (b"null", "?", "frame: expected a JSON object, got null None"),
        (json.dumps(TRADE).encode(), "?", "frame: not a combined-stream frame or control reply"),
        (b'{"stream":5,"data":{}}', "?", "stream: expected a string, got number 5"),
        (b'{"stream":"bnbbtc@trade"}', "bnbbtc@trade", "data: missing"),
        (b'{"data":{}}', "?", "stream: missing"),
        (wrap("bnbbtc@trade", [1]), "bnbbtc@trade", "data: expected an object, got array [1]"),
        (wrap("bnbbtc@trade", "x"), "bnbbtc@trade", "data: expected an object, got string 'x'"),
        (wrap("bnbbtc@depth", {}), "bnbbtc@depth", "stream: unknown stream type 'bnbbtc@depth'"),
        (wrap("bnbbtc@depth5@100ms", {}), "bnbbtc@depth5@100ms", "stream: unknown stream type"),
        (wrap("bnbbtc@kline_7m", KLINE), "bnbbtc@kline_7m", "stream: unknown stream type"),
        (wrap("bnbbtc@kline_1m@+08:00", KLINE), "bnbbtc@kline_1m@+08:00", "stream: unknown stream"),
        (wrap("bnbbtc", TRADE), "bnbbtc", "stream: unknown stream type"),
        (wrap("@trade", TRADE), "@trade", "stream: unknown stream type"),
        (b'{"code":"2","msg":"x"}', "?", "error reply: expected integer code and string msg"),
    ],
)
def test_malformed_frame(frame: bytes, source: str, reason: str) -> None:
    letter = dead_letter(frame)
    assert letter.source == source
    assert letter.reason.startswith(reason), letter.reason


def test_dead_letter_payload_is_storable_text() -> None:
    # PostgreSQL text holds neither NUL nor invalid UTF-8.
    letter = parse_one(b'\x00{"stream"\xff\xfe')
    assert isinstance(letter, DeadLetter)
    assert "\x00" not in letter.payload
    assert letter.payload == '\\x00{"stream"\\xff\\xfe'
    letter.payload.encode("utf-8")


def test_long_stream_name_is_bounded_in_source() -> None:
    letter = parse_one(wrap("x" * 10_000, {}))
    assert isinstance(letter, DeadLetter)
    assert len(letter.source) == 200


def test_a_dead_letter_does_not_poison_the_stream() -> None:
    parser = BinanceParser()
    assert isinstance(parse_one(with_field("trade", "p", "bad"), parser), DeadLetter)
    assert isinstance(parse_one(wrap("bnbbtc@trade", TRADE), parser), Trade)


def test_route_cache_is_bounded() -> None:
    parser = BinanceParser()
    for n in range(5000):
        parse_one(wrap(f"sym{n}@trade", {**TRADE, "s": f"SYM{n}"}), parser)
    assert len(parser._routes) <= 4096


# The memo of literals already checked (sansio._CHECKED): a hit skips the regex.
MEMO_FIELDS = [f for f in DECIMAL_FIELDS if f[0] != "kline"]


@pytest.mark.parametrize(("kind", "path", "name"), MEMO_FIELDS)
@pytest.mark.parametrize("bad", ["1.2.3", "1e41", "\u0661"])
def test_a_refused_literal_is_never_remembered(kind: str, path: str, name: str, bad: str) -> None:
    parser = BinanceParser()
    stream, data = STREAM_OF[kind]
    assert not isinstance(parse_one(wrap(stream, data), parser), DeadLetter)
    for _ in range(2):
        letter = parse_one(with_field(kind, path, bad), parser)
        assert isinstance(letter, DeadLetter)
        assert letter.reason.startswith(f"data.{path} ({name}): expected a decimal string")
    assert bad not in sansio._CHECKED.recent and bad not in sansio._CHECKED.older


def test_records_share_one_string_per_literal() -> None:
    # Two frames, two decodes, equal literals: one str object (hashed once downstream).
    parser = BinanceParser()
    price = "67012.3" + "4000000"
    first, second = (
        parse_one(wrap("bnbbtc@trade", {**TRADE, "t": n, "p": price}), parser) for n in (1, 2)
    )
    assert isinstance(first, Trade) and isinstance(second, Trade)
    assert first.price == price and first.price is second.price


def test_checked_literal_memo_is_bounded() -> None:
    parser = BinanceParser()
    limit = sansio.CHECKED_LITERALS_LIMIT
    for n in range(limit // 2 + 100):
        sizes = {key: f"{n}.{k}" for k, key in enumerate("bBaA")}
        quote = parse_one(wrap("bnbusdt@bookTicker", {**BOOK_TICKER, **sizes}), parser)
        assert isinstance(quote, Quote) and quote.ask_size == f"{n}.3"
    assert len(sansio._CHECKED) <= limit


# --- REST pages -------------------------------------------------------------


def test_historical_trades_page() -> None:
    assert parse_historical_trades_page("bnbbtc", REST_HISTORICAL_TRADES, RECV) == [
        Trade(
            provider="binance",
            symbol="BNBBTC",
            channel="trade",
            trade_id="28457",
            seq=28457,
            ts_ns=1499865549590_000_000,
            price="4.00000100",
            size="12.00000000",
            received_ns=RECV,
            is_buyer_maker=True,
        )
    ]


def test_agg_trades_page() -> None:
    assert parse_agg_trades_page("BNBBTC", REST_AGG_TRADES, RECV) == [
        Trade(
            provider="binance",
            symbol="BNBBTC",
            channel="aggTrade",
            trade_id="26129",
            seq=26129,
            ts_ns=1498793709153_000_000,
            price="0.01633102",
            size="4.70443515",
            received_ns=RECV,
            is_buyer_maker=True,
            first_trade_id=27781,
            last_trade_id=27781,
        )
    ]


def test_klines_page_final_bar() -> None:
    assert parse_klines_page("BNBBTC", "1d", REST_KLINES, RECV) == [
        Candle(
            provider="binance",
            symbol="BNBBTC",
            channel="kline_1d",
            interval="1d",
            open_ts_ns=1499040000000_000_000,
            close_ts_ns=1499644799999_000_000,
            open="0.01634790",
            high="0.80000000",
            low="0.01575800",
            close="0.01577100",
            volume="148976.11427815",
            received_ns=RECV,
            final=True,
            event_ts_ns=1499644799999_000_000,
            quote_volume="2434.19055334",
            trade_count=308,
        )
    ]


def test_klines_page_open_bar_is_not_final() -> None:
    received_ns = 1499644799998_000_000  # before the bar's close
    [candle] = parse_klines_page("BNBBTC", "1d", REST_KLINES, received_ns)
    assert isinstance(candle, Candle)
    assert candle.final is False
    assert candle.event_ts_ns == received_ns


def test_rest_pages_in_microseconds() -> None:
    body = REST_AGG_TRADES.replace(b"1498793709153", b"1498793709153042")
    [trade] = parse_agg_trades_page("BNBBTC", body, RECV, time_unit="us")
    assert isinstance(trade, Trade)
    assert trade.ts_ns == 1498793709153042_000


def test_rest_bad_rows_become_dead_letters_and_good_rows_are_kept() -> None:
    good = json.loads(REST_AGG_TRADES)[0]
    bad_price = {**good, "a": 26130, "p": 0.01633102}
    missing_id = {k: v for k, v in good.items() if k != "a"}
    body = json.dumps([good, bad_price, missing_id, {**good, "a": 26131}]).encode()
    records = parse_agg_trades_page("BNBBTC", body, RECV)
    assert [type(r) for r in records] == [Trade, DeadLetter, DeadLetter, Trade]
    letters = [r for r in records if isinstance(r, DeadLetter)]
    assert letters[0].reason.startswith("rows[1].p (price): expected a decimal string")
    assert letters[0].payload == json.dumps(bad_price)
    assert letters[0].source == "/api/v3/aggTrades?symbol=BNBBTC"
    assert letters[1].reason == "rows[2].a (agg_id): missing"


def test_rest_bad_decimal_string_in_an_otherwise_typed_page() -> None:
    body = REST_HISTORICAL_TRADES.replace(b'"12.00000000"', b'"1.2e99"')
    [letter] = parse_historical_trades_page("BNBBTC", body, RECV)
    assert isinstance(letter, DeadLetter)
    assert letter.reason.startswith("rows[0].qty: expected a decimal string")


def test_rest_bad_kline_row_names_the_column() -> None:
    row = json.loads(REST_KLINES)[0]
    short = row[:5]
    bad_count = [*row[:8], "308", *row[9:]]
    body = json.dumps([row, short, bad_count]).encode()
    records = parse_klines_page("BNBBTC", "1d", body, RECV)
    assert isinstance(records[0], Candle)
    assert isinstance(records[1], DeadLetter)
    assert records[1].reason == "rows[1][5] (volume): missing"
    assert isinstance(records[2], DeadLetter)
    assert records[2].reason.startswith("rows[2][8] (trade_count): expected an integer")
    assert records[2].source == "/api/v3/klines?symbol=BNBBTC&interval=1d"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            b'{"code":-1121,"msg":"Invalid symbol."}',
            "body: error reply code -1121: Invalid symbol.",
        ),
        (b'{"unexpected":true}', "body: expected a JSON array of rows, got object"),
        (b"<html>502</html>", "body: not valid JSON"),
        (b'{"a":', "body: not valid JSON"),
    ],
)
def test_rest_bad_body_is_one_dead_letter(body: bytes, reason: str) -> None:
    for records in (
        parse_agg_trades_page("BNBBTC", body, RECV),
        parse_historical_trades_page("BNBBTC", body, RECV),
        parse_klines_page("BNBBTC", "1m", body, RECV),
    ):
        [letter] = records
        assert isinstance(letter, DeadLetter)
        assert letter.reason.startswith(reason), letter.reason
        assert letter.payload == body.decode()


def test_rest_empty_page() -> None:
    assert parse_agg_trades_page("BNBBTC", b"[]", RECV) == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"code":-1121,"msg":"Invalid symbol."}', (-1121, "Invalid symbol.")),
        (
            b'{"code":-1003,"msg":"Too much request weight used"}',
            (-1003, "Too much request weight used"),
        ),
        (b"[]", None),
        (b'{"code":"x","msg":"y"}', None),
        (b"<html>", None),
    ],
)
def test_parse_error_body(body: bytes, expected: tuple[int, str] | None) -> None:
    assert parse_error_body(body) == expected


# --- the same event over WebSocket and REST ---------------------------------


def same_but_received(rest: Record, ws: Record) -> bool:
    assert isinstance(ws, Trade | Candle)
    return msgspec.structs.replace(rest, received_ns=ws.received_ns) == ws


def test_trade_over_rest_equals_trade_over_websocket() -> None:
    ws_trade = {**TRADE, "t": 28457, "p": "4.00000100", "q": "12.00000000", "T": 1499865549590}
    ws = parse_one(wrap("bnbbtc@trade", ws_trade))
    [rest] = parse_historical_trades_page("BNBBTC", REST_HISTORICAL_TRADES, RECV + 1)
    assert rest != ws
    assert same_but_received(rest, ws)


def test_agg_trade_over_rest_equals_agg_trade_over_websocket() -> None:
    row = json.loads(REST_AGG_TRADES)[0]
    ws = parse_one(wrap("bnbbtc@aggTrade", {**row, "e": "aggTrade", "E": 1, "s": "BNBBTC"}))
    [rest] = parse_agg_trades_page("bnbbtc", REST_AGG_TRADES, RECV + 1)
    assert same_but_received(rest, ws)


# --- properties -------------------------------------------------------------

decimals = st.from_regex(r"[0-9]{1,20}(\.[0-9]{1,18})?", fullmatch=True)
ids = st.integers(min_value=0, max_value=2**63 - 1)
times_ms = st.integers(min_value=0, max_value=4_102_444_800_000)  # up to 2100


@given(price=decimals, qty=decimals, trade_id=ids, time=times_ms, maker=st.booleans())
def test_trade_keeps_exact_strings_and_matches_rest(
    price: str, qty: str, trade_id: int, time: int, maker: bool
) -> None:
    data = {**TRADE, "t": trade_id, "p": price, "q": qty, "T": time, "m": maker}
    ws = parse_one(wrap("bnbbtc@trade", data))
    assert isinstance(ws, Trade)
    assert (ws.price, ws.size, ws.seq, ws.trade_id) == (price, qty, trade_id, str(trade_id))
    assert ws.ts_ns == time * 1_000_000
    row = {"id": trade_id, "price": price, "qty": qty, "time": time, "isBuyerMaker": maker}
    [rest] = parse_historical_trades_page("BNBBTC", json.dumps([row]).encode(), RECV)
    assert same_but_received(rest, ws)


@given(
    prices=st.lists(decimals, min_size=4, max_size=4),
    agg_id=ids,
    first=ids,
    last=ids,
    update_id=ids,
)
def test_agg_trade_and_book_ticker_keep_exact_values(
    prices: list[str], agg_id: int, first: int, last: int, update_id: int
) -> None:
    agg = {**AGG_TRADE, "a": agg_id, "f": first, "l": last, "p": prices[0], "q": prices[1]}
    trade = parse_one(wrap("bnbbtc@aggTrade", agg))
    assert isinstance(trade, Trade)
    assert (trade.seq, trade.first_trade_id, trade.last_trade_id) == (agg_id, first, last)
    assert (trade.price, trade.size) == (prices[0], prices[1])
    book = dict(zip("bBaA", prices, strict=True))
    quote = parse_one(wrap("bnbusdt@bookTicker", {**BOOK_TICKER, "u": update_id, **book}))
    assert isinstance(quote, Quote)
    assert (quote.bid_price, quote.bid_size, quote.ask_price, quote.ask_size) == tuple(prices)
    assert quote.seq == update_id


@settings(max_examples=300)
@given(
    frame=st.binary(max_size=300) | st.text(max_size=300).map(str.encode) | st.text(max_size=300)
)
def test_random_input_never_raises(frame: bytes | str) -> None:
    records = BinanceParser().parse(frame, RECV)
    assert len(records) == 1
    for parse_page in (parse_agg_trades_page, parse_historical_trades_page):
        body = frame.encode() if isinstance(frame, str) else frame
        assert all(isinstance(r, DeadLetter) for r in parse_page("X", body, RECV))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
    | decimals,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300)
@given(
    kind_and_path=st.sampled_from(
        [("trade", key) for key in "stpqTm"]
        + [("aggTrade", key) for key in "aflpq"]
        + [("bookTicker", key) for key in "ubBaA"]
        + [("kline", key) for key in ("E", "k", "k.t", "k.T", "k.o", "k.n", "k.x", "k.i")]
    ),
    value=json_values,
)
def test_fast_and_slow_path_agree(kind_and_path: tuple[str, str], value: Any) -> None:
    """Any value in any field: a record, or a dead letter naming that very field."""
    kind, path = kind_and_path
    record = parse_one(with_field(kind, path, value))
    if isinstance(record, DeadLetter):
        assert record.reason.startswith(f"data.{path}"), record.reason
        assert ": invalid" not in record.reason
    else:
        assert isinstance(record, Trade | Quote | Candle)


@settings(max_examples=300)
@given(
    stream=st.sampled_from([*(stream for stream, _ in STREAM_OF.values()), "!serverShutdown"])
    | st.text(max_size=20),
    data=json_values,
)
def test_random_json_in_an_envelope_never_raises(stream: str, data: Any) -> None:
    records = BinanceParser().parse(wrap(stream, data), RECV)
    assert len(records) == 1
    if isinstance(records[0], DeadLetter):
        assert records[0].reason.startswith(("stream:", "data:", "data.")), records[0].reason
        assert ": invalid" not in records[0].reason


# --- speed ------------------------------------------------------------------

BENCH_FRAMES = [
    wrap("btcusdt@trade", {**TRADE, "s": "BTCUSDT", "t": 4_000_000_000 + n, "p": "67012.34000000"})
    for n in range(1000)
]


def test_parse_trade_benchmark(benchmark: Any) -> None:
    """Run with --benchmark-enable; frames/s = 1000 / mean."""
    parser = BinanceParser()

    def parse_all() -> list[Record]:
        parse = parser.parse
        out: list[Record] = []
        for frame in BENCH_FRAMES:
            out += parse(frame, RECV)
        return out

    records = benchmark(parse_all)
    assert len(records) == len(BENCH_FRAMES)
    assert all(isinstance(r, Trade) and r.price == "67012.34000000" for r in records)
    assert records[-1].seq == 4_000_000_999
