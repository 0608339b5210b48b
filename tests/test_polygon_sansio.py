"""Polygon/Massive sans-IO adapter: session messages, frames, REST pages.

Fixtures are the shapes in docs/wire-formats.md section 2 (the provider's
spec examples), so a change in parsing shows up against the documented wire.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdagent.providers.polygon import (
    PolygonParser,
    auth_message,
    parse_aggs_page,
    parse_error_body,
    parse_quotes_page,
    parse_trades_page,
    subscribe_message,
    trade_id,
    unsubscribe_message,
)
from mdagent.records import Candle, DeadLetter, Quote, Record, StreamControl, Trade

RECV = 1_700_000_000_123_456_789

# wire-formats.md 2.3, verbatim.
WS_TRADE = {
    "ev": "T",
    "sym": "MSFT",
    "x": 4,
    "i": "12345",
    "z": 3,
    "p": 114.125,
    "s": 100,
    "c": [0, 12],
    "t": 1536036818784,
    "q": 3681328,
}
WS_QUOTE = {
    "ev": "Q",
    "sym": "MSFT",
    "bx": 4,
    "bp": 114.125,
    "bs": 100,
    "ax": 7,
    "ap": 114.128,
    "as": 160,
    "c": 0,
    "i": [604],
    "t": 1536036818784,
    "q": 50385480,
    "z": 3,
}
WS_MINUTE = {
    "ev": "AM",
    "sym": "GTE",
    "v": 4110,
    "av": 9470157,
    "op": 0.4372,
    "vw": 0.4488,
    "o": 0.4488,
    "c": 0.4486,
    "h": 0.4489,
    "l": 0.4486,
    "a": 0.4352,
    "z": 685,
    "s": 1610144640000,
    "e": 1610144700000,
}
WS_SECOND = {**WS_MINUTE, "ev": "A", "s": 1610144640000, "e": 1610144641000}

# wire-formats.md 2.5, with the exact ns sip_timestamp (above 2**53).
REST_TRADES_BODY = b"""{"next_url":"https://api.massive.com/v3/trades/AAPL?cursor=YWN0",
"request_id":"a47d1beb8c11b6ae897ab76cdbbf35a3",
"results":[{"conditions":[12,41],"exchange":11,"id":"1","participant_timestamp":1517562000015577088,
"price":171.55,"sequence_number":1063,"sip_timestamp":1517562000016036581,"size":100,"tape":3}],
"status":"OK"}"""

REST_AGGS_BODY = b"""{"adjusted":true,"next_url":"https://api.massive.com/v2/aggs/ticker/AAPL/range/1/minute/1578114000000/2020-01-10?cursor=bGltaXQ9MiZzb3J0PWFzYw",
"queryCount":2,"request_id":"6a7e466379af0a71039d60cc78e72282",
"results":[{"c":75.0875,"h":75.15,"l":73.7975,"n":1,"o":74.06,"t":1577941200000,"v":135647456,"vw":74.6099}],
"resultsCount":2,"status":"OK","ticker":"AAPL"}"""


def frame(*events: dict[str, Any]) -> bytes:
    return json.dumps(list(events)).encode()


def dead_letters(records: list[Record]) -> list[DeadLetter]:
    return [r for r in records if isinstance(r, DeadLetter)]


@pytest.fixture
def parser() -> PolygonParser:
    return PolygonParser()


# --------------------------------------------------------------------------
# Session messages


def test_auth_message() -> None:
    assert json.loads(auth_message('sec"ret')) == {"action": "auth", "params": 'sec"ret'}


def test_subscribe_message_is_channel_major_and_deduplicated() -> None:
    msg = subscribe_message(["T", "Q", "AM"], ["AAPL", "*", "AAPL"])
    assert json.loads(msg) == {
        "action": "subscribe",
        "params": "T.AAPL,T.*,Q.AAPL,Q.*,AM.AAPL,AM.*",
    }


def test_unsubscribe_message() -> None:
    assert unsubscribe_message(["T"], ["AAPL"]) == '{"action":"unsubscribe","params":"T.AAPL"}'


@pytest.mark.parametrize(("channels", "symbols"), [(["XT"], ["AAPL"]), ([], ["AAPL"]), (["T"], [])])
def test_subscribe_message_rejects_bad_input(channels: list[str], symbols: list[str]) -> None:
    with pytest.raises(ValueError):
        subscribe_message(channels, symbols)


# --------------------------------------------------------------------------
# WebSocket events


def test_trade(parser: PolygonParser) -> None:
    assert parser.parse(frame(WS_TRADE), RECV) == [
        Trade(
            provider="polygon",
            symbol="MSFT",
            channel="T",
            trade_id="4::12345",
            seq=3681328,
            ts_ns=1536036818784_000_000,
            price="114.125",
            size="100",
            received_ns=RECV,
            exchange=4,
            tape=3,
            conditions=(0, 12),
        )
    ]


def test_trade_optional_fields(parser: PolygonParser) -> None:
    event = {**WS_TRADE, "trfi": 202, "trft": 1536036818780, "ds": "100.5", "e": 12}
    del event["c"]
    [trade] = parser.parse(frame(event), RECV)
    assert isinstance(trade, Trade)
    assert trade.trade_id == "4:202:12345"
    assert (trade.trf_id, trade.size, trade.correction, trade.conditions) == (
        202,
        "100.5",
        12,
        None,
    )


def test_trade_empty_conditions_are_none(parser: PolygonParser) -> None:
    [trade] = parser.parse(frame({**WS_TRADE, "c": []}), RECV)
    assert isinstance(trade, Trade)
    assert trade.conditions is None


def test_quote(parser: PolygonParser) -> None:
    assert parser.parse(frame(WS_QUOTE), RECV) == [
        Quote(
            provider="polygon",
            symbol="MSFT",
            channel="Q",
            seq=50385480,
            ts_ns=1536036818784_000_000,
            bid_price="114.125",
            bid_size="100",
            ask_price="114.128",
            ask_size="160",
            received_ns=RECV,
            bid_exchange=4,
            ask_exchange=7,
            conditions=(0,),
            indicators=(604,),
            tape=3,
        )
    ]


@pytest.mark.parametrize(
    ("event", "channel", "interval"), [(WS_MINUTE, "AM", "1m"), (WS_SECOND, "A", "1s")]
)
def test_aggregate(
    parser: PolygonParser, event: dict[str, Any], channel: str, interval: str
) -> None:
    assert parser.parse(frame(event), RECV) == [
        Candle(
            provider="polygon",
            symbol="GTE",
            channel=channel,
            interval=interval,
            open_ts_ns=event["s"] * 1_000_000,
            close_ts_ns=event["e"] * 1_000_000,
            open="0.4488",
            high="0.4489",
            low="0.4486",
            close="0.4486",
            volume="4110",
            received_ns=RECV,
            final=False,
            event_ts_ns=RECV,
            vwap="0.4488",
            trade_count=None,
        )
    ]


def test_aggregate_fractional_volume_wins(parser: PolygonParser) -> None:
    [candle] = parser.parse(frame({**WS_MINUTE, "dv": "4110.25", "dav": "1.5"}), RECV)
    assert isinstance(candle, Candle)
    assert candle.volume == "4110.25"


@pytest.mark.parametrize(
    ("status", "message"),
    [
        ("connected", "Connected Successfully"),
        ("auth_success", "authenticated"),
        ("auth_failed", "authentication failed"),
        ("auth_timeout", "No authentication request received."),
        ("max_connections", "Maximum number of websocket connections exceeded."),
        ("success", "subscribed to: T.AAPL"),
        ("error", "something went wrong"),
    ],
)
def test_status_events(parser: PolygonParser, status: str, message: str) -> None:
    records = parser.parse(frame({"ev": "status", "status": status, "message": message}), RECV)
    assert records == [
        StreamControl(provider="polygon", kind="status", status=status, message=message)
    ]


def test_status_without_message(parser: PolygonParser) -> None:
    records = parser.parse(b'[{"ev":"status","status":"success"}]', RECV)
    assert records == [StreamControl(provider="polygon", kind="status", status="success")]


def test_mixed_frame_keeps_order(parser: PolygonParser) -> None:
    status = {"ev": "status", "status": "success", "message": "subscribed to: T.*"}
    records = parser.parse(frame(status, WS_TRADE, WS_QUOTE, WS_MINUTE, WS_SECOND, WS_TRADE), RECV)
    assert [type(r) for r in records] == [StreamControl, Trade, Quote, Candle, Candle, Trade]


def test_str_and_bytes_frames_agree(parser: PolygonParser) -> None:
    data = frame(WS_TRADE, WS_QUOTE)
    assert parser.parse(data, RECV) == parser.parse(data.decode(), RECV)


def test_empty_frame(parser: PolygonParser) -> None:
    assert parser.parse(b"[]", RECV) == []


def test_unknown_fields_are_ignored(parser: PolygonParser) -> None:
    [trade] = parser.parse(frame({**WS_TRADE, "new_field": {"nested": [1, 2]}}), RECV)
    assert isinstance(trade, Trade)


# --------------------------------------------------------------------------
# Exact decimals


@pytest.mark.parametrize(
    ("literal", "text"),
    [
        ("114.1250000000000000001", "114.1250000000000000001"),
        ("114.10", "114.10"),  # the literal's own scale is kept
        ("1E+2", "100"),
        ("1e2", "100"),
        ("1.5e-7", "0.00000015"),
        ("0.0000001", "0.0000001"),
        ("-0.0", "0.0"),
        ("123456789012345678901234567890.5", "123456789012345678901234567890.5"),
    ],
)
def test_price_keeps_exact_literal(parser: PolygonParser, literal: str, text: str) -> None:
    data = frame(WS_TRADE).replace(b'"p": 114.125', b'"p": ' + literal.encode())
    [trade] = parser.parse(data, RECV)
    assert isinstance(trade, Trade)
    assert trade.price == text


# --------------------------------------------------------------------------
# Malformed input: dead letters, the good elements survive


def _without(event: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != key}


@pytest.mark.parametrize(
    ("element", "source", "reason"),
    [
        (_without(WS_TRADE, "p"), "T", "invalid T event: Object missing required field `p`"),
        ({**WS_TRADE, "s": "100"}, "T", "Expected `int`, got `str` - at `$.s`"),
        ({**WS_TRADE, "p": "NaN"}, "T", "`p` is not a decimal number: 'NaN'"),
        ({**WS_TRADE, "p": "Infinity"}, "T", "`p` is not a decimal number: 'Infinity'"),
        ({**WS_TRADE, "p": -1.5}, "T", "`p` must be >= 0, got -1.5"),
        ({**WS_TRADE, "p": True}, "T", "`p` must be a number, got a boolean"),
        ({**WS_TRADE, "t": 1.5e-3}, "T", "`t` must be a whole number, got 0.0015"),
        ({**WS_TRADE, "t": -1}, "T", "Expected `int` >= 0 - at `$.t`"),
        ({**WS_TRADE, "t": 2**63}, "T", "at `$.t`"),  # ms * 1e6 would overflow int64
        ({**WS_TRADE, "c": [0, "x"]}, "T", "at `$.c[1]`"),
        ({**WS_TRADE, "i": ""}, "T", "at `$.i`"),
        ({**WS_TRADE, "ds": "abc"}, "T", "`ds` is not a decimal number: 'abc'"),
        (_without(WS_QUOTE, "q"), "Q", "invalid Q event: Object missing required field `q`"),
        (_without(WS_QUOTE, "as"), "Q", "Object missing required field `as`"),
        ({**WS_QUOTE, "c": [1]}, "Q", "got `array` - at `$.c`"),
        ({**WS_MINUTE, "vw": "inf"}, "AM", "`vw` is not a decimal number: 'inf'"),
        ({**WS_SECOND, "h": None}, "A", "`h` must be a number, got null"),
        ({"ev": "status"}, "status", "Object missing required field `status`"),
        ({"ev": "LULD", "sym": "AAPL"}, "LULD", "unknown event type `ev`='LULD'"),
        ({"sym": "AAPL"}, "?", "element is not an event object with a string `ev`"),
        ({"ev": 7}, "?", "element is not an event object with a string `ev`"),
        ([1, 2], "?", "Expected `object`, got `array`"),
        ("T", "?", "Expected `object`, got `str`"),
    ],
)
def test_bad_element_is_dead_lettered(
    parser: PolygonParser, element: Any, source: str, reason: str
) -> None:
    bad = json.dumps(element)
    data = f"[{json.dumps(WS_TRADE)},{bad},{json.dumps(WS_QUOTE)}]".encode()
    records = parser.parse(data, RECV)
    assert [type(r) for r in records] == [Trade, DeadLetter, Quote]
    letter = records[1]
    assert isinstance(letter, DeadLetter)
    assert (letter.provider, letter.source, letter.payload, letter.received_ns) == (
        "polygon",
        source,
        bad,
        RECV,
    )
    assert reason in letter.reason


def test_dead_letter_payload_is_the_exact_element_text(parser: PolygonParser) -> None:
    data = b'[ {"ev":"T",  "sym":"X"} ,{"ev":"status","status":"success"}]'
    letter, control = parser.parse(data, RECV)
    assert isinstance(letter, DeadLetter)
    assert letter.payload == '{"ev":"T",  "sym":"X"}'
    assert isinstance(control, StreamControl)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b'{"ev":"status","status":"connected"}',
        b"[{]",
        b'[{"ev":"T"}',  # truncated
        b"[" * 100_000,  # deeper than msgspec's recursion guard
        b"\xff\xfe[]",
        "[\ud800]",  # str frame with a lone surrogate
    ],
)
def test_bad_frame_is_one_dead_letter(parser: PolygonParser, data: bytes | str) -> None:
    [letter] = parser.parse(data, RECV)
    assert isinstance(letter, DeadLetter)
    assert (letter.source, letter.received_ns) == ("?", RECV)
    assert letter.reason.startswith("frame is not a JSON array")
    letter.payload.encode("utf-8")  # storable as PostgreSQL text
    assert "\x00" not in letter.payload


def test_deeply_nested_unknown_field_is_contained(parser: PolygonParser) -> None:
    deep = b"[" * 50_000 + b"]" * 50_000
    data = b'[{"ev":"T","junk":' + deep + b"}," + json.dumps(WS_QUOTE).encode() + b"]"
    # Even splitting the array into elements hits the recursion guard, so the
    # whole frame is one dead letter: kept, not raised.
    [letter] = parser.parse(data, RECV)
    assert isinstance(letter, DeadLetter)
    assert "recursion" in letter.reason


def test_nul_in_payload_is_escaped(parser: PolygonParser) -> None:
    [letter] = parser.parse(b"\x00[]", RECV)
    assert isinstance(letter, DeadLetter)
    assert letter.payload == "\\x00[]"


def test_absurd_exponent_is_rejected(parser: PolygonParser) -> None:
    data = frame(WS_TRADE).replace(b'"p": 114.125', b'"p": 1e-20000')
    [letter] = parser.parse(data, RECV)
    assert isinstance(letter, DeadLetter)
    assert "`p` has a decimal exponent beyond +-40" in letter.reason


# --------------------------------------------------------------------------
# REST pages


def test_trades_page() -> None:
    records, next_url = parse_trades_page("AAPL", REST_TRADES_BODY, RECV)
    assert next_url == "https://api.massive.com/v3/trades/AAPL?cursor=YWN0"
    assert records == [
        Trade(
            provider="polygon",
            symbol="AAPL",
            channel="T",
            trade_id="11::1",
            seq=1063,
            ts_ns=1517562000016036581,  # exact: a float would give ...036608
            price="171.55",
            size="100",
            received_ns=RECV,
            exchange=11,
            tape=3,
            conditions=(12, 41),
        )
    ]


def test_trades_page_without_results_or_next_url() -> None:
    assert parse_trades_page("AAPL", b'{"status":"OK","request_id":"x"}', RECV) == ([], None)


def test_trades_page_decimal_size_and_trf() -> None:
    body = json.dumps(
        {
            "results": [
                {
                    "exchange": 4,
                    "trf_id": 3,
                    "id": "52983525029461",
                    "price": 171.5,
                    "size": 0,
                    "decimal_size": "0.25",
                    "sip_timestamp": 1517562000016036581,
                    "correction": 1,
                }
            ]
        }
    ).encode()
    [trade], _ = parse_trades_page("AAPL", body, RECV)
    assert isinstance(trade, Trade)
    assert (trade.trade_id, trade.size, trade.correction) == ("4:3:52983525029461", "0.25", 1)


def test_trades_page_bad_result_is_dead_lettered() -> None:
    good = {"exchange": 11, "id": "1", "price": 1, "size": 1, "sip_timestamp": 10**18}
    bad_ts = {**good, "id": "2", "sip_timestamp": 999}
    body = json.dumps({"results": [good, bad_ts, good], "next_url": "u"}).encode()
    body = body.replace(b"999", b"1517562000016036600.5")  # not whole: no float can say it
    records, next_url = parse_trades_page("AAPL", body, RECV)
    assert next_url == "u"
    assert [type(r) for r in records] == [Trade, DeadLetter, Trade]
    letter = records[1]
    assert isinstance(letter, DeadLetter)
    assert letter.source == "/v3/trades/AAPL"
    assert "`sip_timestamp` must be a whole number, got 1517562000016036600.5" in letter.reason
    assert '"sip_timestamp": 1517562000016036600.5' in letter.payload


@pytest.mark.parametrize("body", [b"", b"[]", b"<html>502</html>", b'{"results": 5}'])
def test_unreadable_page_is_one_dead_letter(body: bytes) -> None:
    records, next_url = parse_trades_page("AAPL", body, RECV)
    assert next_url is None
    [letter] = records
    assert isinstance(letter, DeadLetter)
    assert letter.reason.startswith("body is not a results page")


def test_rest_trade_matches_websocket_trade(parser: PolygonParser) -> None:
    sip_ns = 1536036818784_123_456  # > 2**53; the WebSocket sends it as ms
    ws_event = {**WS_TRADE, "x": 4, "trfi": 202, "p": 114.1250000000000000001, "t": sip_ns // 10**6}
    rest_result = {
        "conditions": [0, 12],
        "exchange": 4,
        "trf_id": 202,
        "id": "12345",
        "price": 114.1250000000000000001,
        "sequence_number": 3681328,
        "sip_timestamp": sip_ns,
        "participant_timestamp": sip_ns - 500,
        "size": 100,
        "tape": 3,
    }
    [ws] = parser.parse(frame(ws_event), RECV)
    [rest], _ = parse_trades_page("MSFT", json.dumps({"results": [rest_result]}).encode(), RECV)
    assert isinstance(ws, Trade)
    assert isinstance(rest, Trade)

    def key(t: Trade) -> tuple[Any, ...]:
        return (
            t.symbol,
            t.channel,
            t.trade_id,
            t.ts_ns // 1_000_000,
            t.price,
            t.size,
            t.exchange,
            t.conditions,
            t.seq,
        )

    assert key(ws) == key(rest)
    assert rest.ts_ns == sip_ns  # REST keeps the full ns precision
    assert ws.trade_id == trade_id(4, 202, "12345")


def test_trade_id_differs_per_exchange_and_trf() -> None:
    ids = {
        trade_id(4, 202, "1"),
        trade_id(4, 201, "1"),
        trade_id(4, None, "1"),
        trade_id(11, None, "1"),
    }
    assert len(ids) == 4


def test_quotes_page() -> None:
    body = json.dumps(
        {
            "results": [
                {
                    "ask_exchange": 7,
                    "ask_price": 114.128,
                    "ask_size": 160,
                    "bid_exchange": 4,
                    "bid_price": 114.125,
                    "bid_size": 100,
                    "conditions": [1, 17],
                    "indicators": [604],
                    "participant_timestamp": 1536036818784000123,
                    "sequence_number": 50385480,
                    "sip_timestamp": 1536036818784123456,
                    "tape": 3,
                }
            ],
            "status": "OK",
        }
    ).encode()
    records, next_url = parse_quotes_page("MSFT", body, RECV)
    assert next_url is None
    assert records == [
        Quote(
            provider="polygon",
            symbol="MSFT",
            channel="Q",
            seq=50385480,
            ts_ns=1536036818784123456,
            bid_price="114.125",
            bid_size="100",
            ask_price="114.128",
            ask_size="160",
            received_ns=RECV,
            bid_exchange=4,
            ask_exchange=7,
            conditions=(1, 17),  # every condition, not only the first
            indicators=(604,),
            tape=3,
        )
    ]


def test_quotes_page_missing_sequence_is_dead_lettered() -> None:
    body = (
        b'{"results":[{"bid_price":1,"bid_size":1,"ask_price":2,"ask_size":1,"sip_timestamp":5}]}'
    )
    [letter], _ = parse_quotes_page("MSFT", body, RECV)
    assert isinstance(letter, DeadLetter)
    assert "missing required field `sequence_number`" in letter.reason


def test_aggs_page_minute() -> None:
    records, next_url = parse_aggs_page("AAPL", 1, "minute", REST_AGGS_BODY, RECV)
    assert next_url is not None and "cursor=" in next_url
    assert records == [
        Candle(
            provider="polygon",
            symbol="AAPL",
            channel="AM",
            interval="1m",
            open_ts_ns=1577941200000_000_000,
            close_ts_ns=1577941260000_000_000,
            open="74.06",
            high="75.15",
            low="73.7975",
            close="75.0875",
            volume="135647456",
            received_ns=RECV,
            final=False,
            event_ts_ns=RECV,
            vwap="74.6099",
            trade_count=1,
        )
    ]


def test_aggs_page_second_and_float_volume() -> None:
    body = b'{"results":[{"c":1,"h":1,"l":1,"o":1,"t":1610144640000,"v":1.33454e+06}]}'
    [candle], _ = parse_aggs_page("GTE", 1, "second", body, RECV)
    assert isinstance(candle, Candle)
    assert (candle.channel, candle.interval, candle.volume) == ("A", "1s", "1334540")
    assert candle.close_ts_ns - candle.open_ts_ns == 1_000_000_000
    assert (candle.vwap, candle.trade_count) == (None, None)


def test_rest_bar_matches_websocket_bar_window(parser: PolygonParser) -> None:
    [ws] = parser.parse(frame(WS_MINUTE), RECV)
    body = json.dumps({"results": [{"c": 1, "h": 1, "l": 1, "o": 1, "v": 1, "t": WS_MINUTE["s"]}]})
    [rest], _ = parse_aggs_page("GTE", 1, "minute", body.encode(), RECV)
    assert isinstance(ws, Candle)
    assert isinstance(rest, Candle)
    assert (ws.open_ts_ns, ws.close_ts_ns, ws.channel) == (
        rest.open_ts_ns,
        rest.close_ts_ns,
        rest.channel,
    )


@pytest.mark.parametrize(("multiplier", "timespan"), [(5, "minute"), (1, "hour"), (1, "minutes")])
def test_aggs_page_rejects_other_spans(multiplier: int, timespan: str) -> None:
    with pytest.raises(ValueError, match="unsupported aggregate span"):
        parse_aggs_page("AAPL", multiplier, timespan, b"{}", RECV)


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (
            b'{"status":"ERROR","request_id":"r","error":"Unknown API Key"}',
            "ERROR: Unknown API Key",
        ),
        (
            b'{"status":"NOT_AUTHORIZED","request_id":"r","message":"You are not entitled to this data."}',
            "NOT_AUTHORIZED: You are not entitled to this data.",
        ),
        (b'{"error":"bare"}', "bare"),
        (b'{"status":"OK","results":[]}', None),
        (b"<html>Bad Gateway</html>", None),
        (b"[]", None),
        (b'{"status":5,"error":"x"}', None),
    ],
)
def test_parse_error_body(body: bytes, text: str | None) -> None:
    assert parse_error_body(body) == text


# --------------------------------------------------------------------------
# Properties


_mantissas = st.integers(min_value=0, max_value=10**40 - 1)  # numbers.py: at most 40 digits
_scales = st.integers(min_value=0, max_value=40)


@given(mantissa=_mantissas, scale=_scales, exponent_form=st.booleans())
def test_random_decimal_prices_survive_exactly(
    mantissa: int, scale: int, exponent_form: bool
) -> None:
    value = Decimal(f"{mantissa}E-{scale}")  # exact; scaleb() would round to 28 digits
    literal = f"{mantissa}e-{scale}" if exponent_form else format(value, "f")
    data = b'[{"ev":"T","sym":"A","x":1,"i":"1","p":%s,"s":1,"t":1}]' % literal.encode()
    [trade] = PolygonParser().parse(data, RECV)
    assert isinstance(trade, Trade)
    assert Decimal(trade.price) == value
    assert "E" not in trade.price and "e" not in trade.price
    if not exponent_form:
        assert trade.price == literal  # the literal text, untouched


@given(sip_ns=st.integers(min_value=2**53, max_value=2**63 - 1))
def test_rest_ns_timestamps_are_exact(sip_ns: int) -> None:
    body = b'{"results":[{"exchange":1,"id":"1","price":1,"size":1,"sip_timestamp":%d}]}' % sip_ns
    [trade], _ = parse_trades_page("A", body, RECV)
    assert isinstance(trade, Trade)
    assert trade.ts_ns == sip_ns


_json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
_json = st.recursive(
    _json_leaf,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["ev", "sym", "p", "s", "t", "x", "i", "c", "q", "results", "status"]),
            children | st.sampled_from(["T", "Q", "AM", "A", "status"]),
            max_size=8,
        )
    ),
    max_leaves=30,
)


def _check_never_raises(records: list[Record]) -> None:
    for record in records:
        if isinstance(record, DeadLetter):
            record.payload.encode("utf-8")
            assert "\x00" not in record.payload


@settings(max_examples=300)
@given(data=st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    _check_never_raises(PolygonParser().parse(data, RECV))
    for page_parser in (parse_trades_page, parse_quotes_page):
        records, _ = page_parser("A", data, RECV)
        _check_never_raises(records)
    records, _ = parse_aggs_page("A", 1, "minute", data, RECV)
    _check_never_raises(records)
    parse_error_body(data)


@settings(max_examples=300)
@given(text=st.text(max_size=200))
def test_random_text_never_raises(text: str) -> None:
    _check_never_raises(PolygonParser().parse(text, RECV))


@settings(max_examples=300)
@given(value=_json)
def test_random_json_never_raises(value: Any) -> None:
    data = json.dumps(value).encode()  # may contain NaN/Infinity: invalid JSON, also fine
    _check_never_raises(PolygonParser().parse(data, RECV))
    _check_never_raises(PolygonParser().parse(b"[" + data + b"]", RECV))
    records, _ = parse_trades_page("A", json.dumps({"results": [value]}).encode(), RECV)
    _check_never_raises(records)


# --------------------------------------------------------------------------
# Speed (runs once as a test; measure with --benchmark-enable)


def _benchmark_frame() -> bytes:
    events: list[dict[str, Any]] = []
    for n in range(50):
        kind = n % 10
        if kind < 6:
            events.append({**WS_TRADE, "p": 114.125 + n / 1000, "q": 3681328 + n, "i": str(n)})
        elif kind < 9:
            events.append({**WS_QUOTE, "q": 50385480 + n})
        else:
            events.append(WS_MINUTE if n % 20 == 9 else WS_SECOND)
    return msgspec.json.encode(events)


def test_benchmark_mixed_frame(benchmark: Any) -> None:
    data = _benchmark_frame()
    parser = PolygonParser()
    records = benchmark(parser.parse, data, RECV)
    assert len(records) == 50
    assert not dead_letters(records)
    assert sum(isinstance(r, Trade) for r in records) == 30


@pytest.mark.parametrize(
    ("literal", "text"),
    [
        (b"114.125", "114.125"),
        (b"114.1250", "114.1250"),  # the scale is kept
        (b"1.5e3", "1500"),
        (b"1E-7", "0.0000001"),
        (b"7", "7"),
        (b'"0.25"', "0.25"),  # a decimal string, as ds is sent
        (b"1" + b"0" * 30 + b".000000005", "1" + "0" * 30 + ".000000005"),  # too long to cache
    ],
)
def test_price_literals_are_exact_on_first_and_cached_use(
    parser: PolygonParser, literal: bytes, text: str
) -> None:
    frame = b'[{"ev":"T","sym":"A","x":1,"i":"1","p":%s,"s":1,"t":1}]' % literal
    first = parser.parse(frame, RECV)
    again = parser.parse(frame, RECV)  # now from the literal cache
    for records in (first, again):
        [trade] = records
        assert isinstance(trade, Trade)
        assert trade.price == text


def test_integer_price_with_too_many_digits_is_dead_lettered(parser: PolygonParser) -> None:
    frame = b'[{"ev":"T","sym":"A","x":1,"i":"1","p":%s,"s":1,"t":1}]' % (b"9" * 1200)
    [letter] = parser.parse(frame, RECV)
    assert isinstance(letter, DeadLetter)
    assert "`p` has 1200 significant digits (at most 40)" in letter.reason
