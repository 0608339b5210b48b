"""Both parsers' promise, "bad input never raises", over every byte string (issue 9).

Hypothesis generates arbitrary bytes and text, and frames mutated from valid
ones; the hostile corpus adds the kinds issue 9 lists. Every input yields a
list of records (dead letters for what is bad), never an exception.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdagent.providers.base import Parser
from mdagent.providers.binance.sansio import BinanceParser
from mdagent.providers.polygon.sansio import PolygonParser, parse_aggs_page, parse_trades_page
from mdagent.records import DeadLetter, Record
from tests.hostile_corpus import hostile_frames

PARSERS: dict[str, Callable[[], Parser]] = {
    "binance": lambda: BinanceParser(symbols=["BTCUSDT"]),
    "polygon": PolygonParser,
}
VALID = {
    "binance": b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":7,'
    b'"p":"30000.01","q":"0.5","T":1764345600250,"m":false,"M":true}}',
    "polygon": b'[{"ev":"T","sym":"QRST","i":"1","x":4,"p":21.5,"s":100,"t":1764345600250,"q":1}]',
}


def parse_all(provider: str, frame: bytes | str) -> list[Record]:
    records = list(PARSERS[provider]().parse(frame, 1))
    assert records or provider == "polygon"  # an empty Polygon array has no events
    for record in records:
        if isinstance(record, DeadLetter):
            # Storable: no NUL, valid UTF-8 (encode raises otherwise).
            for text in (record.payload, record.reason, record.source):
                assert "\x00" not in text
                text.encode("utf-8")
    return records


@pytest.mark.parametrize("provider", ["binance", "polygon"])
@given(frame=st.binary(max_size=300))
@settings(max_examples=300)
def test_random_bytes_never_raise(provider: str, frame: bytes) -> None:
    parse_all(provider, frame)


@pytest.mark.parametrize("provider", ["binance", "polygon"])
@given(frame=st.text(max_size=200))
def test_random_text_with_surrogates_never_raises(provider: str, frame: str) -> None:
    parse_all(provider, frame)


@pytest.mark.parametrize("provider", ["binance", "polygon"])
@given(data=st.data())
@settings(max_examples=300)
def test_mutated_valid_frames_never_raise(provider: str, data: st.DataObject) -> None:
    frame = bytearray(VALID[provider])
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(frame) - 1))
        frame[at : at + 1] = data.draw(st.binary(min_size=0, max_size=6))
        if not frame:
            frame = bytearray(b"x")
    parse_all(provider, bytes(frame))


@pytest.mark.parametrize("provider", ["binance", "polygon"])
def test_every_kind_of_hostile_frame_is_a_dead_letter(provider: str) -> None:
    for frame in hostile_frames(provider, 300):
        records = parse_all(provider, frame)
        # Nothing hostile becomes market data (Polygon's parser does not know
        # the subscription: a well-formed trade of another ticker is data).
        kinds = {type(r).__name__ for r in records if getattr(r, "symbol", "") != "ZZZZ"}
        assert kinds <= {"DeadLetter", "StreamControl"}, (frame, records)


@given(body=st.binary(max_size=300))
def test_polygon_rest_pages_never_raise(body: bytes) -> None:
    parse_trades_page("AAPL", body, 1)
    parse_aggs_page("AAPL", 1, "minute", body, 1)
