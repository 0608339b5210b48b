"""Hostile frames of every kind issue 9 lists, for the fuzz tests and the hostile run.

``hostile_frames(provider, n, seed)`` returns ``n`` frames (bytes, or str for
text that no UTF-8 encoder would produce) cycling through the kinds below,
varied by a seeded RNG so a run is reproducible.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

Frame = bytes | str

_BINANCE_TRADE = {
    "e": "trade",
    "E": 1764345600250,
    "s": "BTCUSDT",
    "t": 7,
    "p": "30000.01",
    "q": "0.5",
    "T": 1764345600250,
    "m": False,
    "M": True,
}
_POLYGON_TRADE = {
    "ev": "T",
    "sym": "QRST",
    "i": "1",
    "x": 4,
    "p": 21.5,
    "s": 100,
    "t": 1764345600250,
    "q": 1,
}


def _binance(data: object, stream: str = "btcusdt@trade") -> bytes:
    return json.dumps({"stream": stream, "data": data}).encode()


def _polygon(*events: object) -> bytes:
    return json.dumps(list(events)).encode()


def _with(base: dict[str, object], **changes: object) -> dict[str, object]:
    return {**base, **changes}


def _kinds(provider: str) -> list[Callable[[random.Random], Frame]]:
    wrap: Callable[[dict[str, object]], bytes]
    if provider == "binance":
        base, wrap, price, size = _BINANCE_TRADE, _binance, "p", "q"
    else:
        base, wrap, price, size = _POLYGON_TRADE, _polygon, "p", "s"
    valid_price = b'"p": "30000.01"' if provider == "binance" else b'"p": 21.5'

    def raw_number(literal: bytes) -> bytes:
        """The valid frame with its price replaced by a raw JSON literal."""
        return wrap(base).replace(valid_price, b'"p": ' + literal)

    return [
        lambda r: r.randbytes(r.randint(0, 64)),  # random bytes
        lambda r: b'{"stream":"btcusdt@trade","data":{"s":"\xff' + r.randbytes(3) + b'"}}',
        lambda r: b'[{"ev":"T","sym":"\xc3\x28"}]',  # invalid UTF-8
        lambda r: wrap(base)[: r.randint(1, 40)],  # truncated JSON
        lambda r: b"[" * r.randint(100, 5000) + b"]" * r.randint(0, 10),  # deep nesting
        lambda r: b'{"a":' * 3000 + b"1" + b"}" * 3000,
        lambda r: raw_number(b"1e400"),  # out of every range
        lambda r: raw_number(b"-1e-400"),
        lambda r: raw_number(b"1" + b"0" * r.randint(41, 500)),
        lambda r: wrap(_with(base, t=2**64 + r.randint(0, 9))),
        lambda r: wrap(_with(base, t=-1)),
        lambda r: wrap(_with(base, **{price: "NaN"})),  # strings for numbers and back
        lambda r: wrap(_with(base, **{size: "abc"})),
        lambda r: wrap(_with(base, **{price: 1.5e300})),
        lambda r: wrap(_with(base, t="12345")),
        lambda r: wrap(_with(base, t=None, s=[1, 2])),
        lambda r: _binance(base, stream="btcusdt@depth@100ms"),  # unknown streams / events
        lambda r: _polygon({"ev": "LULD", "sym": "QRST"}),
        lambda r: _binance(_with(base, s="ETHUSDT"), stream="ethusdt@trade"),  # not subscribed
        lambda r: _polygon(_with(base, sym="ZZZZ")),
        lambda r: b"\x00" * r.randint(1, 10),
        lambda r: "[\ud800]",  # a lone surrogate in a str frame
        lambda r: '{"stream":"\udcff@trade","data":{}}',
        lambda r: b"null",
        lambda r: b'{"result":null,"id":' + str(r.randint(0, 9)).encode() + b"}",
        lambda r: b'{"code":"x","msg":5}',
        lambda r: b"[" + b",".join([b'{"ev":"T"}'] * r.randint(1, 50)) + b"]",
    ]


def hostile_frames(provider: str, n: int, seed: int = 9) -> list[Frame]:
    """``n`` hostile frames for ``provider`` ("binance" or "polygon"), every kind in turn."""
    rng = random.Random(seed)
    kinds = _kinds(provider)
    return [kinds[i % len(kinds)](rng) for i in range(n)]
