"""The shared number rules (mdagent/numbers.py) and both parsers applying them.

Inputs from issue 9: Polygon whole numbers in exponent or float form in
integer fields (WS ``"s":2.405117e+06``, ``"s":300.0``; REST ``"n":1.2005e+04``),
Binance and Polygon prices in every lexical form, absurd values refused with
the field named, and the Binance frames that used to raise out of the parser.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mdagent.numbers import FloatLiteral, NumberError, decimal_text, whole_int
from mdagent.providers.binance.sansio import BinanceParser
from mdagent.providers.polygon.sansio import PolygonParser, parse_aggs_page
from mdagent.records import Candle, DeadLetter, Trade

RECV = 1_764_345_600_999_000_000
WS_TRADE = b'[{"ev":"T","sym":"QRST","i":"1","x":12,"p":21.5,"s":%s,"t":1764345600250,"q":1}]'


@pytest.mark.parametrize(
    ("literal", "size"), [(b"2.405117e+06", "2405117"), (b"300.0", "300"), (b"3E2", "300")]
)
def test_polygon_ws_size_in_float_form_is_the_exact_integer(literal: bytes, size: str) -> None:
    [trade] = PolygonParser().parse(WS_TRADE % literal, RECV)
    assert isinstance(trade, Trade)
    assert trade.size == size
    assert trade.price == "21.5"


@pytest.mark.parametrize(
    ("literal", "why"),
    [
        (b"300.5", "`s` must be a whole number, got 300.5"),
        (b"1e400", "`s` is out of range: 1e400"),
        (b"9.3e18", "`s` is out of range [0, 9223372036854775807]: 9300000000000000000"),
        (b'"300"', "Expected `int`, got `str`"),
    ],
)
def test_polygon_ws_size_not_a_whole_number_in_range_names_the_field(
    literal: bytes, why: str
) -> None:
    [letter] = PolygonParser().parse(WS_TRADE % literal, RECV)
    assert isinstance(letter, DeadLetter)
    assert why in letter.reason


def test_polygon_rest_trade_count_in_exponent_form() -> None:
    body = (
        b'{"results":[{"c":75.0875,"h":75.15,"l":73.7975,"n":1.2005e+04,"o":74.06,'
        b'"t":1577941200000,"v":135647456,"vw":74.6099}],"status":"OK"}'
    )
    [bar], _next = parse_aggs_page("AAPL", 1, "minute", body, RECV)
    assert isinstance(bar, Candle)
    assert bar.trade_count == 12005
    assert bar.close == "75.0875"


BINANCE_TRADE = (
    '{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":%s,'
    '"p":%s,"q":"1","T":1672515782136,"m":true,"M":true}}'
)


@pytest.mark.parametrize(
    ("price", "stored"), [('"1e-8"', "0.00000001"), ('"1.5E+3"', "1500"), ('"0.0010"', "0.0010")]
)
def test_binance_price_in_every_lexical_form_is_exact(price: str, stored: str) -> None:
    [trade] = BinanceParser().parse(BINANCE_TRADE % ("7", price), RECV)
    assert isinstance(trade, Trade)
    assert trade.price == stored


def test_binance_trade_id_in_float_form_is_whole() -> None:
    [trade] = BinanceParser().parse(BINANCE_TRADE % ("7.0e0", '"1"'), RECV)
    assert isinstance(trade, Trade)
    assert (trade.seq, trade.trade_id) == (7, "7")


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        # Issue 9 input 5: a JSON number 1e400 as the price raised ValidationError.
        (BINANCE_TRADE % ("7", "1e400"), 'data.p (price): expected a decimal string like "0.0'),
        (BINANCE_TRADE % ("7", '"1e400"'), "has a decimal exponent beyond +-40"),
        (BINANCE_TRADE % ("7", '"NaN"'), "is not a decimal number"),
        (BINANCE_TRADE % ("7", '"' + "1" * 41 + '"'), "has 41 significant digits"),
        (BINANCE_TRADE % ("1e400", '"1"'), "data.t (trade_id): expected an integer"),
    ],
)
def test_binance_absurd_numbers_are_dead_letters_naming_the_field(frame: str, why: str) -> None:
    [letter] = BinanceParser().parse(frame, RECV)
    assert isinstance(letter, DeadLetter)
    assert why in letter.reason, letter.reason


def test_binance_invalid_utf8_inside_data_is_a_dead_letter() -> None:
    # Issue 9 input 5: this raised msgspec.DecodeError out of the parser.
    frame = b'{"stream":"btcusdt@trade","data":{"s":"\xff"}}'
    [letter] = BinanceParser().parse(frame, RECV)
    assert isinstance(letter, DeadLetter)
    assert letter.source == "btcusdt@trade"
    assert "not valid JSON" in letter.reason
    assert letter.payload == '{"stream":"btcusdt@trade","data":{"s":"\\xff"}}'


@given(
    mantissa=st.integers(min_value=0, max_value=10**40 - 1),
    exponent=st.integers(min_value=-80, max_value=80),
    upper=st.booleans(),
)
def test_decimal_text_is_exact_or_refused_by_the_stated_bounds(
    mantissa: int, exponent: int, upper: bool
) -> None:
    literal = f"{mantissa}{'E' if upper else 'e'}{exponent}"
    value = Decimal(literal)
    try:
        text = decimal_text(literal, "p")
    except NumberError as error:
        assert error.field == "p"
        assert (mantissa != 0 and abs(value.adjusted()) > 40) or (
            mantissa == 0 and abs(exponent) > 40
        )
        return
    assert Decimal(text) == value
    assert "e" not in text.lower()


@given(st.integers(min_value=-(10**30), max_value=10**30), st.integers(min_value=0, max_value=5))
def test_whole_int_accepts_every_spelling_of_a_whole_number(number: int, zeros: int) -> None:
    spelled = FloatLiteral(f"{number}.{'0' * zeros}" if zeros else f"{number}e0")
    assert whole_int(spelled, "n") == number
