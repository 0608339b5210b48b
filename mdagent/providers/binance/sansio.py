"""Binance Spot, sans-IO: stream names, control messages, frame and REST page parsing.

Everything here is a pure function of its arguments; the I/O client
(``io.py``) and the backfill workers feed it bytes and a receive time.

Design of the hot path (one call per WebSocket frame, >= 400k frames/s):

1. Decode the combined-stream envelope into ``_Envelope`` with ``data`` left
   as ``msgspec.Raw`` (a zero-copy slice of the frame).
2. Look the stream name up in a per-parser dict that caches what the name
   means (channel, symbol, kline interval, which decoder), so stream names
   are split only once per connection.
3. Decode ``data`` with a typed decoder whose Struct carries the validation:
   integers must be non-negative JSON integers, booleans JSON booleans,
   prices/sizes JSON strings.
4. Check the fields declared ``DecimalStr`` with
   :func:`mdagent.numbers.is_plain_decimal` (one precompiled regex call). This
   is not a msgspec ``Meta(pattern=...)`` because that measured ~290 ns per
   field against ~140 ns for a direct ``match`` call: on a trade frame, 0.3 of
   ~1.5 us.

Only when a check fails does the slow path run: it decodes the input
generically (float literals kept as text) and applies the shared number rules
of :mod:`mdagent.numbers` to the same Struct: a whole number in float form in
an integer field, or a decimal string in exponent form (``"1e-8"``), is
accepted with its exact value. What still fails is named by walking the
Struct's type description (``msgspec.inspect`` plus the ``DecimalStr``
marks). Fast and slow path share one definition of "valid".

Bad input never raises: it becomes a single ``DeadLetter``.
"""

from __future__ import annotations

import functools
import operator
import typing
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Final, Literal, NamedTuple, TypeVar

import msgspec
import msgspec.inspect as mi

from mdagent.memo import Memo
from mdagent.numbers import (
    FloatLiteral,
    NumberError,
    decimal_text,
    is_plain_decimal,
    relaxed_convert,
    relaxed_decoder,
    whole_int,
)
from mdagent.providers.binance.channels import BINANCE_KLINE_INTERVALS
from mdagent.records import Candle, DeadLetter, Quote, Record, StreamControl, Trade
from mdagent.symbols import url_path_part
from mdagent.text import storable_text

__all__ = [
    "PROVIDER",
    "BinanceParser",
    "TimeUnit",
    "combined_stream_url",
    "list_subscriptions_message",
    "parse_agg_trades_page",
    "parse_error_body",
    "parse_historical_trades_page",
    "parse_klines_page",
    "stream_name",
    "subscribe_message",
    "unsubscribe_message",
]

PROVIDER: Final = "binance"

TimeUnit = Literal["ms", "us"]
# Nanoseconds per provider time unit. ``us`` is what a connection opened with
# ``timeUnit=MICROSECOND`` (or REST with ``X-MBX-TIME-UNIT: MICROSECOND``) sends.
_NS_PER_UNIT: Final[dict[str, int]] = {"ms": 1_000_000, "us": 1_000}

_INT64_MAX: Final = 2**63 - 1

# A plain decimal literal of at most 40 digits, as Binance sends prices and
# sizes: the fast check. Other forms go through numbers.decimal_text.
_is_decimal: Final = is_plain_decimal

# Literals of the stream hot path that passed ``_is_decimal``, each mapped to
# itself (memo.py). Prices sit on a tick grid and recur all day, and sizes
# often do: a hit is one dict lookup (~40 ns) where the regex call is ~160 ns,
# on every price and size of every frame. The value is the first string seen,
# so records share one object per literal and the row encoder's own memo
# (db/copy_rows.py) hashes it once. Sized like that memo.
CHECKED_LITERALS_LIMIT: Final = 1 << 14
_CHECKED: Final = Memo[str, str](CHECKED_LITERALS_LIMIT)
_checked: Final = _CHECKED.recent.get


def _new_literal(text: str) -> str | None:
    """After a miss in ``_checked``: ``text`` if it is a plain decimal (then remembered), else None."""
    known = _CHECKED.recall(text)
    if known is not None:
        return known
    if _is_decimal(text) is None:
        return None
    _CHECKED.remember(text, text)
    return text


class _DecimalMark:
    """Annotated metadata: this str field holds a decimal (``mdagent.numbers`` rules).

    msgspec ignores it; ``_decimal_fields`` finds it for both paths.
    """


DecimalStr = Annotated[str, _DecimalMark()]
# Ids and times land in bigint columns: reject what PostgreSQL could not store.
UInt = Annotated[int, msgspec.Meta(ge=0, le=_INT64_MAX)]

# A hostile server could invent stream names without end; the route cache is
# cleared when it reaches this size instead of growing.
_MAX_CACHED_ROUTES: Final = 4096
_SHUTDOWN_STREAM: Final = "!serverShutdown"


# --------------------------------------------------------------------------
# Stream names and control messages
# --------------------------------------------------------------------------


def stream_name(symbol: str, channel: str) -> str:
    """``("BTCUSDT", "kline_1m")`` -> ``"btcusdt@kline_1m"`` (Binance wants lowercase)."""
    return f"{symbol.lower()}@{channel}"


def combined_stream_url(ws_url: str, streams: Sequence[str], *, time_unit: TimeUnit = "ms") -> str:
    """URL of one combined-stream connection: ``<ws_url>/stream?streams=a/b/c``.

    Stream names are percent-encoded as UTF-8 (non-ASCII symbols,
    wire-formats.md 1.9); ``@`` stays as it is. With ``time_unit="us"`` the URL asks for microsecond time fields; the
    parser for that connection must then be built with the same unit.
    """
    if not streams:
        raise ValueError("combined_stream_url: at least one stream is required")
    _check_time_unit(time_unit)
    url = f"{ws_url.rstrip('/')}/stream?streams={'/'.join(map(url_path_part, streams))}"
    if time_unit == "us":
        url += "&timeUnit=MICROSECOND"
    return url


def subscribe_message(streams: Sequence[str], request_id: int | str) -> str:
    return _control_message("SUBSCRIBE", request_id, list(streams))


def unsubscribe_message(streams: Sequence[str], request_id: int | str) -> str:
    return _control_message("UNSUBSCRIBE", request_id, list(streams))


def list_subscriptions_message(request_id: int | str) -> str:
    return _control_message("LIST_SUBSCRIPTIONS", request_id, None)


def _control_message(method: str, request_id: int | str, params: list[str] | None) -> str:
    message: dict[str, Any] = {"method": method}
    if params is not None:
        message["params"] = params
    message["id"] = request_id
    return msgspec.json.encode(message).decode()


def _check_time_unit(time_unit: str) -> int:
    try:
        return _NS_PER_UNIT[time_unit]
    except KeyError:
        raise ValueError(f"time_unit must be 'ms' or 'us', got {time_unit!r}") from None


# --------------------------------------------------------------------------
# Wire shapes. Only the fields mdagent stores are declared: Binance adds
# fields over time (and documents M as "ignore"), which must not turn every
# frame into a dead letter. Attribute names say what a field is; the wire
# name is the msgspec field name.
# --------------------------------------------------------------------------


class _Envelope(msgspec.Struct, gc=False):
    stream: str
    data: msgspec.Raw


class _TradeData(msgspec.Struct, gc=False):
    symbol: str = msgspec.field(name="s")
    trade_id: UInt = msgspec.field(name="t")
    price: DecimalStr = msgspec.field(name="p")
    qty: DecimalStr = msgspec.field(name="q")
    trade_time: UInt = msgspec.field(name="T")
    buyer_is_maker: bool = msgspec.field(name="m")


class _AggTradeData(msgspec.Struct, gc=False):
    symbol: str = msgspec.field(name="s")
    agg_id: UInt = msgspec.field(name="a")
    price: DecimalStr = msgspec.field(name="p")
    qty: DecimalStr = msgspec.field(name="q")
    first_trade_id: UInt = msgspec.field(name="f")
    last_trade_id: UInt = msgspec.field(name="l")
    trade_time: UInt = msgspec.field(name="T")
    buyer_is_maker: bool = msgspec.field(name="m")


class _BookTickerData(msgspec.Struct, gc=False):
    symbol: str = msgspec.field(name="s")
    update_id: UInt = msgspec.field(name="u")
    bid_price: DecimalStr = msgspec.field(name="b")
    bid_qty: DecimalStr = msgspec.field(name="B")
    ask_price: DecimalStr = msgspec.field(name="a")
    ask_qty: DecimalStr = msgspec.field(name="A")


class _KlineBar(msgspec.Struct, gc=False):
    open_time: UInt = msgspec.field(name="t")
    close_time: UInt = msgspec.field(name="T")
    symbol: str = msgspec.field(name="s")
    interval: str = msgspec.field(name="i")
    open: DecimalStr = msgspec.field(name="o")
    high: DecimalStr = msgspec.field(name="h")
    low: DecimalStr = msgspec.field(name="l")
    close: DecimalStr = msgspec.field(name="c")
    volume: DecimalStr = msgspec.field(name="v")
    quote_volume: DecimalStr = msgspec.field(name="q")
    trade_count: UInt = msgspec.field(name="n")
    closed: bool = msgspec.field(name="x")


class _KlineData(msgspec.Struct, gc=False):
    symbol: str = msgspec.field(name="s")
    event_time: UInt = msgspec.field(name="E")
    bar: _KlineBar = msgspec.field(name="k")


# REST rows (section 1.7 of wire-formats.md).


class _RestAggTrade(msgspec.Struct, gc=False):
    agg_id: UInt = msgspec.field(name="a")
    price: DecimalStr = msgspec.field(name="p")
    qty: DecimalStr = msgspec.field(name="q")
    first_trade_id: UInt = msgspec.field(name="f")
    last_trade_id: UInt = msgspec.field(name="l")
    trade_time: UInt = msgspec.field(name="T")
    buyer_is_maker: bool = msgspec.field(name="m")


class _RestTrade(msgspec.Struct, gc=False):
    trade_id: UInt = msgspec.field(name="id")
    price: DecimalStr
    qty: DecimalStr
    time: UInt
    buyer_is_maker: bool = msgspec.field(name="isBuyerMaker")


class _RestKline(msgspec.Struct, array_like=True, gc=False):
    # [openTime, o, h, l, c, volume, closeTime, quoteVol, trades, ...]; the
    # taker-buy columns and "ignore" after these are not stored, and
    # array_like Structs skip trailing elements.
    open_time: UInt
    open: DecimalStr
    high: DecimalStr
    low: DecimalStr
    close: DecimalStr
    volume: DecimalStr
    close_time: UInt
    quote_volume: DecimalStr
    trade_count: UInt


class _ErrorBody(msgspec.Struct, gc=False):
    code: int
    msg: str


# --------------------------------------------------------------------------
# Slow path: name the first field that makes an input invalid.
# --------------------------------------------------------------------------


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float | FloatLiteral):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _got(value: Any) -> str:
    try:
        shown = repr(str(value) if isinstance(value, FloatLiteral) else value)
    except RecursionError:
        shown = "(deeply nested)"
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"got {_json_type(value)} {shown}"


def _int_problem(value: Any, t: mi.IntType) -> str | None:
    if isinstance(value, FloatLiteral):
        try:
            value = whole_int(value, "", t.ge, t.le)
        except NumberError as error:
            return f"expected an integer ({error.problem}), {_got(value)}"
    # bool is an int subclass in Python but a different JSON type.
    if type(value) is not int:
        return f"expected an integer, {_got(value)}"
    if t.ge is not None and value < t.ge:
        return f"expected an integer >= {t.ge}, {_got(value)}"
    if t.le is not None and value > t.le:
        return f"expected an integer <= {t.le}, {_got(value)}"
    return None


def _leaf_problem(value: Any, t: mi.Type, decimal: bool) -> str | None:
    """Why a scalar ``value`` does not fit ``t`` (and, if ``decimal``, the pattern)."""
    if decimal:
        if not isinstance(value, str) or isinstance(value, FloatLiteral):
            return f'expected a decimal string like "0.00100000", {_got(value)}'
        try:
            decimal_text(value, "")
        except NumberError as error:
            return f'expected a decimal string like "0.00100000" ({error.problem}), {_got(value)}'
        return None
    if isinstance(t, mi.IntType):
        return _int_problem(value, t)
    if isinstance(t, mi.StrType) and (
        not isinstance(value, str) or isinstance(value, FloatLiteral)
    ):
        return f"expected a string, {_got(value)}"
    if isinstance(t, mi.BoolType) and not isinstance(value, bool):
        return f"expected true or false, {_got(value)}"
    # Raw and Any fields accept anything.
    return None


def _struct_problem(value: Any, t: mi.StructType, path: str) -> str | None:
    """Why ``value`` does not fit Struct ``t``, naming the first bad field; None if it fits.

    ``path`` is the wire path (``data.k``, ``rows[3]``); a field's label adds
    its attribute name when the wire name does not say it (``data.p (price)``).
    """
    where = path or "frame"
    if t.array_like and not isinstance(value, list):
        return f"{where}: expected an array, {_got(value)}"
    if not t.array_like and not isinstance(value, dict):
        return f"{where}: expected an object, {_got(value)}"
    decimals = _decimal_fields(t.cls)
    for index, field in enumerate(t.fields):
        if t.array_like:
            field_path = f"{path}[{index}]"
            present = index < len(value)
            label = f"{field_path} ({field.name})"
        else:
            field_path = f"{path}.{field.encode_name}" if path else field.encode_name
            present = field.encode_name in value
            same = field.name == field.encode_name
            label = field_path if same else f"{field_path} ({field.name})"
        if not present:
            if field.required:
                return f"{label}: missing"
            continue
        item = value[index] if t.array_like else value[field.encode_name]
        if isinstance(field.type, mi.StructType):
            problem = _struct_problem(item, field.type, field_path)
            if problem is not None:
                return problem
            continue
        leaf = _leaf_problem(item, field.type, field.name in decimals)
        if leaf is not None:
            return f"{label}: {leaf}"
    return None


@functools.cache
def _struct_info(cls: type[msgspec.Struct]) -> mi.StructType:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return info


@functools.cache
def _decimal_fields(cls: type[msgspec.Struct]) -> frozenset[str]:
    """Attribute names of ``cls`` declared ``DecimalStr``."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return frozenset(
        name
        for name, hint in hints.items()
        if any(isinstance(meta, _DecimalMark) for meta in getattr(hint, "__metadata__", ()))
    )


@functools.cache
def _decimals_of(cls: type[msgspec.Struct]) -> Callable[[Any], tuple[str, ...]]:
    """A getter of all ``DecimalStr`` values of a ``cls`` instance, for the fast check."""
    names = sorted(_decimal_fields(cls))
    # attrgetter returns a bare value, not a 1-tuple, for a single name.
    assert len(names) >= 2, f"{cls.__name__}: fast check expects >= 2 decimal fields"
    return operator.attrgetter(*names)


_ENVELOPE_INFO: Final = _struct_info(_Envelope)


def _reason(value: Any, cls: type[msgspec.Struct], path: str, error: Exception | None) -> str:
    """The slow path's reason; msgspec's own message if the walk finds nothing."""
    problem = _struct_problem(value, _struct_info(cls), path)
    if problem is not None:
        return problem
    return f"{path}: {error}" if error is not None else f"{path}: invalid"


_S = TypeVar("_S", bound=msgspec.Struct)

# What decoding hostile input may raise: malformed JSON or invalid UTF-8
# (DecodeError), nesting past msgspec's guard (RecursionError), a str frame
# holding a lone surrogate (UnicodeEncodeError).
_DECODE_ERRORS: Final = (msgspec.DecodeError, RecursionError, UnicodeEncodeError)
# Decodes anything JSON; float literals stay text (numbers.FloatLiteral), so
# a number such as 1e400 is reported, not raised as "out of range".
_RELAXED_DECODER: Final = relaxed_decoder()


def _slow_checked(cls: type[_S], data: msgspec.Raw | bytes, path: str) -> _S | str:
    """``data`` as a valid ``cls`` under the shared number rules, or why it is not.

    Accepts what the typed fast path refuses but :mod:`mdagent.numbers`
    allows: whole numbers in float form in integer fields, decimal strings in
    exponent form (normalized to plain text). Returns the reason (naming the
    field under ``path``) for anything else.
    """
    try:
        value = _RELAXED_DECODER.decode(data)
    except _DECODE_ERRORS as error:
        return f"{path}: not valid JSON ({error})"
    try:
        checked: _S = relaxed_convert(value, cls)
        _normalize_decimals(checked)
    except (NumberError, msgspec.ValidationError, RecursionError) as error:
        return _reason(value, cls, path, error)
    return checked


def _normalize_decimals(obj: msgspec.Struct) -> None:
    """Put every ``DecimalStr`` field of ``obj`` (and nested Structs) in plain form.

    Raises NumberError with an empty field name (the caller's walk names it).
    Mutates ``obj``: only freshly decoded Structs of the slow path come here.
    """
    cls = type(obj)
    decimals = _decimal_fields(cls)
    for field in _struct_info(cls).fields:
        value = getattr(obj, field.name)
        if field.name in decimals:
            if _is_decimal(value) is None:
                setattr(obj, field.name, decimal_text(value, ""))
        elif isinstance(value, msgspec.Struct):
            _normalize_decimals(value)


def _dead(source: str, reason: str, payload: bytes | str, received_ns: int) -> DeadLetter:
    return DeadLetter(
        provider=PROVIDER,
        # The source comes from the frame itself (the stream name): bounded too.
        source=storable_text(source, 200),
        reason=storable_text(reason),
        payload=storable_text(payload),
        received_ns=received_ns,
    )


# --------------------------------------------------------------------------
# WebSocket frames
# --------------------------------------------------------------------------

_Kind = Literal["trade", "aggTrade", "bookTicker", "kline", "shutdown"]


class _Route(NamedTuple):
    """What a stream name means; computed once per name and cached."""

    kind: _Kind
    symbol: str  # uppercase, as in the data's "s"
    channel: str
    interval: str  # kline interval, "" for other channels


# Channels whose stream suffix is the channel name itself.
_PLAIN_KINDS: Final[dict[str, _Kind]] = {
    "trade": "trade",
    "aggTrade": "aggTrade",
    "bookTicker": "bookTicker",
}


# A channel's parser of a frame's ``data``: (route, stream name, data, the
# whole frame for a dead letter, receive time) -> one record.
_DataParser = Callable[[_Route, str, msgspec.Raw, bytes | str, int], Record]


def _route_for(stream: str) -> _Route | None:
    if stream == _SHUTDOWN_STREAM:
        return _Route("shutdown", "", "", "")
    symbol, at, suffix = stream.partition("@")
    if not at or not symbol:
        return None
    kind = _PLAIN_KINDS.get(suffix)
    if kind is not None:
        return _Route(kind, symbol.upper(), suffix, "")
    interval = suffix.removeprefix("kline_")
    if interval != suffix and interval in BINANCE_KLINE_INTERVALS:
        return _Route("kline", symbol.upper(), suffix, interval)
    return None


class BinanceParser:
    """Parses combined-stream frames of one connection into canonical records.

    Build one per connection: it caches per-stream routing, and ``time_unit``
    must match how the connection was opened (``timeUnit=MICROSECOND`` ->
    ``"us"``).
    """

    def __init__(self, *, time_unit: TimeUnit = "ms", symbols: Sequence[str] | None = None) -> None:
        """``symbols``: the connection's subscribed symbols; frames of other symbols'
        streams are dead letters. None accepts any symbol (e.g. for tests).
        """
        self._ns_per_unit = _check_time_unit(time_unit)
        # Stream-name symbol (lowercase) -> the symbol as the data's "s" spells it.
        self._subscribed = None if symbols is None else {s.lower(): s.upper() for s in symbols}
        # Stream name -> (the channel's data parser, what the name means).
        self._routes: dict[str, tuple[_DataParser, _Route]] = {}
        self._handlers: dict[_Kind, _DataParser] = {
            "trade": self._parse_trade,
            "aggTrade": self._parse_agg_trade,
            "bookTicker": self._parse_book_ticker,
            "kline": self._parse_kline,
            "shutdown": self._parse_shutdown,
        }
        self._envelope = msgspec.json.Decoder(_Envelope)
        self._trade = msgspec.json.Decoder(_TradeData)
        self._agg_trade = msgspec.json.Decoder(_AggTradeData)
        self._book_ticker = msgspec.json.Decoder(_BookTickerData)
        self._kline = msgspec.json.Decoder(_KlineData)
        self._kline_decimals = _decimals_of(_KlineBar)

    def parse(self, frame: bytes | str, received_ns: int) -> list[Record]:
        """One frame -> one record (market data, StreamControl or DeadLetter)."""
        try:
            envelope = self._envelope.decode(frame)
        except _DECODE_ERRORS:
            # Control replies, shutdown notices and garbage have no envelope.
            return [self._parse_unwrapped(frame, received_ns)]
        stream = envelope.stream
        routed = self._routes.get(stream)
        if routed is None:
            new = self._new_route(stream)
            if isinstance(new, str):
                return [_dead(stream, new, frame, received_ns)]
            routed = new
        handler, route = routed
        return [handler(route, stream, envelope.data, frame, received_ns)]

    def _new_route(self, stream: str) -> tuple[_DataParser, _Route] | str:
        """Route a stream name seen for the first time (and cache it), or say why not."""
        route = _route_for(stream)
        if route is None:
            return f"stream: unknown stream type {stream!r}"
        if self._subscribed is not None and route.kind != "shutdown":
            symbol = self._subscribed.get(stream.partition("@")[0])
            if symbol is None:
                return f"stream: {stream!r} is not subscribed on this connection"
            route = route._replace(symbol=symbol)
        if len(self._routes) >= _MAX_CACHED_ROUTES:
            self._routes.clear()
        routed = self._routes[stream] = (self._handlers[route.kind], route)
        return routed

    # Each _parse_<kind> decodes data, checks its DecimalStr fields and hands
    # any failure to _slow_checked, which works out the reason. The three
    # high-rate channels check their decimal fields inline against the memo
    # of literals already checked (_checked, then _new_literal); the tests
    # check every DecimalStr field of every channel is rejected when bad.
    # trade and aggTrade repeat that block on purpose: a shared helper or one
    # handler branching on the kind measured 50-80 ns more per frame (~5-8%
    # of a frame's parse).

    def _parse_trade(
        self, route: _Route, stream: str, data: msgspec.Raw, frame: bytes | str, received_ns: int
    ) -> Record:
        try:
            d = self._trade.decode(data)
            price = _checked(d.price) or _new_literal(d.price)
            qty = _checked(d.qty) or _new_literal(d.qty)
        except msgspec.DecodeError:
            price = qty = None
        if price is None or qty is None:
            checked = _slow_checked(_TradeData, data, "data")
            if isinstance(checked, str):
                return _dead(stream, checked, frame, received_ns)
            d, price, qty = checked, checked.price, checked.qty
        if d.symbol != route.symbol:
            return _symbol_mismatch("data.s", d.symbol, route.symbol, stream, frame, received_ns)
        return Trade(
            provider=PROVIDER,
            symbol=route.symbol,
            channel="trade",
            trade_id=str(d.trade_id),
            seq=d.trade_id,
            ts_ns=d.trade_time * self._ns_per_unit,
            price=price,
            size=qty,
            received_ns=received_ns,
            is_buyer_maker=d.buyer_is_maker,
        )

    def _parse_agg_trade(
        self, route: _Route, stream: str, data: msgspec.Raw, frame: bytes | str, received_ns: int
    ) -> Record:
        try:
            d = self._agg_trade.decode(data)
            price = _checked(d.price) or _new_literal(d.price)
            qty = _checked(d.qty) or _new_literal(d.qty)
        except msgspec.DecodeError:
            price = qty = None
        if price is None or qty is None:
            checked = _slow_checked(_AggTradeData, data, "data")
            if isinstance(checked, str):
                return _dead(stream, checked, frame, received_ns)
            d, price, qty = checked, checked.price, checked.qty
        if d.symbol != route.symbol:
            return _symbol_mismatch("data.s", d.symbol, route.symbol, stream, frame, received_ns)
        return _agg_trade_record(route.symbol, d, price, qty, self._ns_per_unit, received_ns)

    def _parse_book_ticker(
        self, route: _Route, stream: str, data: msgspec.Raw, frame: bytes | str, received_ns: int
    ) -> Record:
        try:
            d = self._book_ticker.decode(data)
            bid_price = _checked(d.bid_price) or _new_literal(d.bid_price)
            bid_qty = _checked(d.bid_qty) or _new_literal(d.bid_qty)
            ask_price = _checked(d.ask_price) or _new_literal(d.ask_price)
            ask_qty = _checked(d.ask_qty) or _new_literal(d.ask_qty)
        except msgspec.DecodeError:
            bid_price = bid_qty = ask_price = ask_qty = None
        if bid_price is None or bid_qty is None or ask_price is None or ask_qty is None:
            checked = _slow_checked(_BookTickerData, data, "data")
            if isinstance(checked, str):
                return _dead(stream, checked, frame, received_ns)
            d = checked
            bid_price, bid_qty, ask_price, ask_qty = d.bid_price, d.bid_qty, d.ask_price, d.ask_qty
        if d.symbol != route.symbol:
            return _symbol_mismatch("data.s", d.symbol, route.symbol, stream, frame, received_ns)
        return Quote(
            provider=PROVIDER,
            symbol=route.symbol,
            channel="bookTicker",
            seq=d.update_id,
            # bookTicker carries no event time; the receive time is the best there is.
            ts_ns=received_ns,
            bid_price=bid_price,
            bid_size=bid_qty,
            ask_price=ask_price,
            ask_size=ask_qty,
            received_ns=received_ns,
        )

    def _parse_kline(
        self, route: _Route, stream: str, data: msgspec.Raw, frame: bytes | str, received_ns: int
    ) -> Record:
        try:
            d: _KlineData | None = self._kline.decode(data)
        except msgspec.DecodeError:
            d = None
        if d is None or not all(map(_is_decimal, self._kline_decimals(d.bar))):
            checked = _slow_checked(_KlineData, data, "data")
            if isinstance(checked, str):
                return _dead(stream, checked, frame, received_ns)
            d = checked
        bar = d.bar
        for path, got in (("data.s", d.symbol), ("data.k.s", bar.symbol)):
            if got != route.symbol:
                return _symbol_mismatch(path, got, route.symbol, stream, frame, received_ns)
        if bar.interval != route.interval:
            reason = (
                f"data.k.i: interval {bar.interval!r} does not match"
                f" stream interval {route.interval!r}"
            )
            return _dead(stream, reason, frame, received_ns)
        scale = self._ns_per_unit
        return Candle(
            provider=PROVIDER,
            symbol=route.symbol,
            channel=route.channel,
            interval=route.interval,
            open_ts_ns=bar.open_time * scale,
            close_ts_ns=bar.close_time * scale,
            open=bar.open,
            high=bar.high,
            low=bar.low,
            close=bar.close,
            volume=bar.volume,
            received_ns=received_ns,
            final=bar.closed,
            event_ts_ns=d.event_time * scale,
            quote_volume=bar.quote_volume,
            trade_count=bar.trade_count,
        )

    def _parse_shutdown(
        self, route: _Route, stream: str, data: msgspec.Raw, frame: bytes | str, received_ns: int
    ) -> Record:
        return StreamControl(provider=PROVIDER, kind="server_shutdown")

    def _parse_unwrapped(self, frame: bytes | str, received_ns: int) -> Record:
        """Slow path for frames without a valid envelope."""
        try:
            value = _RELAXED_DECODER.decode(frame)
        except _DECODE_ERRORS as error:
            return _dead("?", f"frame: not valid JSON ({error})", frame, received_ns)
        if not isinstance(value, dict):
            return _dead("?", f"frame: expected a JSON object, {_got(value)}", frame, received_ns)
        if "stream" in value or "data" in value:
            stream = value.get("stream")
            source = stream if isinstance(stream, str) else "?"
            problem = _struct_problem(value, _ENVELOPE_INFO, "")
            reason = problem if problem is not None else "frame: invalid combined-stream envelope"
            return _dead(source, reason, frame, received_ns)
        return _control_record(value, frame, received_ns)


def _control_record(value: dict[str, Any], frame: bytes | str, received_ns: int) -> Record:
    """A message about the connection: shutdown notice, request reply or error."""
    if value.get("e") == "serverShutdown":
        return StreamControl(provider=PROVIDER, kind="server_shutdown")
    if isinstance(value.get("error"), dict):
        # The live servers wrap errors: {"error":{"code":2,"msg":...},"id":N};
        # the documented form is flat. Accept both.
        value = value["error"]
    if "code" in value:
        code, msg = value["code"], value.get("msg")
        if type(code) is not int or not isinstance(msg, str):
            reason = f"error reply: expected integer code and string msg, got {code!r} / {msg!r}"
            return _dead("?", reason[:200], frame, received_ns)
        return StreamControl(provider=PROVIDER, kind="error", status=str(code), message=msg)
    if "result" in value and "id" in value:
        message = msgspec.json.encode(value["result"]).decode()
        return StreamControl(provider=PROVIDER, kind="subscribed", message=message)
    keys = ", ".join(sorted(value)[:8])
    reason = f"frame: not a combined-stream frame or control reply (keys: {keys})"
    return _dead("?", reason[:300], frame, received_ns)


def _symbol_mismatch(
    path: str, got: str, expected: str, stream: str, frame: bytes | str, received_ns: int
) -> DeadLetter:
    reason = f"{path}: symbol {got!r} does not match stream symbol {expected!r}"
    return _dead(stream, reason, frame, received_ns)


def _agg_trade_record(
    symbol: str,
    d: _AggTradeData | _RestAggTrade,
    price: str,
    qty: str,
    ns_per_unit: int,
    received_ns: int,
) -> Trade:
    # Shared by the stream and REST so the same aggregate trade is the same record.
    return Trade(
        provider=PROVIDER,
        symbol=symbol,
        channel="aggTrade",
        trade_id=str(d.agg_id),
        seq=d.agg_id,
        ts_ns=d.trade_time * ns_per_unit,
        price=price,
        size=qty,
        received_ns=received_ns,
        is_buyer_maker=d.buyer_is_maker,
        first_trade_id=d.first_trade_id,
        last_trade_id=d.last_trade_id,
    )


# --------------------------------------------------------------------------
# REST pages (backfill). Each returns the good rows as records and each bad
# row as a DeadLetter holding that row's exact text; a body that is not a
# list of rows at all becomes one DeadLetter.
# --------------------------------------------------------------------------

_Row = TypeVar("_Row", bound=msgspec.Struct)

_RAW_ROWS_DECODER: Final = msgspec.json.Decoder(list[msgspec.Raw])
_ERROR_BODY_DECODER: Final = msgspec.json.Decoder(_ErrorBody)
_AGG_TRADES_DECODER: Final = msgspec.json.Decoder(list[_RestAggTrade])
_AGG_TRADE_DECODER: Final = msgspec.json.Decoder(_RestAggTrade)
_TRADES_DECODER: Final = msgspec.json.Decoder(list[_RestTrade])
_TRADE_DECODER: Final = msgspec.json.Decoder(_RestTrade)
_KLINES_DECODER: Final = msgspec.json.Decoder(list[_RestKline])
_KLINE_DECODER: Final = msgspec.json.Decoder(_RestKline)


def parse_agg_trades_page(
    symbol: str, body: bytes, received_ns: int, *, time_unit: TimeUnit = "ms"
) -> list[Record]:
    """``GET /api/v3/aggTrades`` body -> aggTrade Trades (and DeadLetters)."""
    sym = symbol.upper()
    scale = _check_time_unit(time_unit)

    def build(row: _RestAggTrade) -> Record:
        return _agg_trade_record(sym, row, row.price, row.qty, scale, received_ns)

    source = f"/api/v3/aggTrades?symbol={sym}"
    return _parse_page(
        body, _RestAggTrade, _AGG_TRADES_DECODER, _AGG_TRADE_DECODER, build, source, received_ns
    )


def parse_historical_trades_page(
    symbol: str, body: bytes, received_ns: int, *, time_unit: TimeUnit = "ms"
) -> list[Record]:
    """``GET /api/v3/historicalTrades`` (or ``/trades``) body -> trade Trades (and DeadLetters)."""
    sym = symbol.upper()
    scale = _check_time_unit(time_unit)

    def build(row: _RestTrade) -> Record:
        return Trade(
            provider=PROVIDER,
            symbol=sym,
            channel="trade",
            trade_id=str(row.trade_id),
            seq=row.trade_id,
            ts_ns=row.time * scale,
            price=row.price,
            size=row.qty,
            received_ns=received_ns,
            is_buyer_maker=row.buyer_is_maker,
        )

    source = f"/api/v3/historicalTrades?symbol={sym}"
    return _parse_page(
        body, _RestTrade, _TRADES_DECODER, _TRADE_DECODER, build, source, received_ns
    )


def parse_klines_page(
    symbol: str, interval: str, body: bytes, received_ns: int, *, time_unit: TimeUnit = "ms"
) -> list[Record]:
    """``GET /api/v3/klines`` body -> Candles (and DeadLetters).

    A bar is final when its close time is before ``received_ns`` (so this
    trusts the local clock). REST has no event time: ``event_ts_ns`` is the
    receive time, capped at the bar's close so that a REST copy never claims
    to be newer than the stream's closing update of the same bar.
    """
    sym = symbol.upper()
    scale = _check_time_unit(time_unit)
    channel = f"kline_{interval}"

    def build(row: _RestKline) -> Record:
        close_ts_ns = row.close_time * scale
        return Candle(
            provider=PROVIDER,
            symbol=sym,
            channel=channel,
            interval=interval,
            open_ts_ns=row.open_time * scale,
            close_ts_ns=close_ts_ns,
            open=row.open,
            high=row.high,
            low=row.low,
            close=row.close,
            volume=row.volume,
            received_ns=received_ns,
            final=close_ts_ns < received_ns,
            event_ts_ns=min(received_ns, close_ts_ns),
            quote_volume=row.quote_volume,
            trade_count=row.trade_count,
        )

    source = f"/api/v3/klines?symbol={sym}&interval={interval}"
    return _parse_page(
        body, _RestKline, _KLINES_DECODER, _KLINE_DECODER, build, source, received_ns
    )


def parse_error_body(body: bytes | str) -> tuple[int, str] | None:
    """``{"code":-1121,"msg":"Invalid symbol."}`` -> ``(-1121, "Invalid symbol.")``; else None."""
    try:
        error = _ERROR_BODY_DECODER.decode(body)
    except _DECODE_ERRORS:
        return None
    return error.code, error.msg


def _parse_page(
    body: bytes,
    row_type: type[_Row],
    page_decoder: msgspec.json.Decoder[list[_Row]],
    row_decoder: msgspec.json.Decoder[_Row],
    build: Callable[[_Row], Record],
    source: str,
    received_ns: int,
) -> list[Record]:
    decimals = _decimals_of(row_type)
    try:
        rows = page_decoder.decode(body)
    except _DECODE_ERRORS:
        return _parse_page_by_row(body, row_type, row_decoder, build, source, received_ns)
    if not all(all(map(_is_decimal, decimals(row))) for row in rows):
        return _parse_page_by_row(body, row_type, row_decoder, build, source, received_ns)
    return [build(row) for row in rows]


def _parse_page_by_row(
    body: bytes,
    row_type: type[_Row],
    row_decoder: msgspec.json.Decoder[_Row],
    build: Callable[[_Row], Record],
    source: str,
    received_ns: int,
) -> list[Record]:
    """Slow path: keep every good row, dead-letter each bad one with its reason."""
    try:
        value = _RELAXED_DECODER.decode(body)
    except _DECODE_ERRORS as error:
        return [_dead(source, f"body: not valid JSON ({error})", body, received_ns)]
    if not isinstance(value, list):
        error_reply = parse_error_body(body)
        if error_reply is not None:
            reason = f"body: error reply code {error_reply[0]}: {error_reply[1]}"
        else:
            reason = f"body: expected a JSON array of rows, {_got(value)}"
        return [_dead(source, reason[:300], body, received_ns)]
    decimals = _decimals_of(row_type)
    # Decoded again as Raw slices so each dead row keeps its exact text.
    raw_rows = _RAW_ROWS_DECODER.decode(body)
    records: list[Record] = []
    for index, raw in enumerate(raw_rows):
        try:
            row: _Row | str = row_decoder.decode(raw)
        except msgspec.DecodeError:
            row = _slow_checked(row_type, raw, f"rows[{index}]")
        else:
            if not all(map(_is_decimal, decimals(row))):
                row = _slow_checked(row_type, raw, f"rows[{index}]")
        if isinstance(row, str):
            records.append(_dead(source, row, bytes(raw), received_ns))
        else:
            records.append(build(row))
    return records
