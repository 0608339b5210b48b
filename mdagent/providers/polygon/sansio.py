"""Polygon.io / Massive stocks, sans-IO: frames and REST pages in, records out.

Nothing here does I/O or touches trio; the stream and backfill clients feed
bytes in and get canonical records (``mdagent.records``) back.

Decoding strategy (the hot path). Every WebSocket frame is a JSON array whose
elements may mix event types. The whole array is decoded in one
``msgspec.json.Decoder`` call into Structs tagged on ``ev``. Prices stay text:
the decoder's ``float_hook=str`` hands over the literal of every non-integer
JSON number, so ``114.1250000000000000001`` stays exact with no float round
trip, and :func:`mdagent.numbers.number_text` checks each literal once (Decimal) and
then finds it in a cache, since prices recur. Building a ``Decimal`` per price and
printing it back cost a third of the parse. Only when the fast decode fails
(one malformed element, an unknown ``ev``) is the frame decoded again as
``list[msgspec.Raw]`` and each element on its own, so the good elements
survive and each bad one becomes a ``DeadLetter`` with the exact reason and
its own JSON text. Bad input never raises.

Range constraints (``msgspec.Meta``) mirror the PostgreSQL column types: one
out-of-range value must become a dead letter here rather than fail a whole
COPY batch in the writer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Annotated, Any, Final, Literal, TypeAlias, TypeVar

import msgspec

from mdagent.numbers import (
    decimal_text,
    number_text,
    relaxed_convert,
    relaxed_decoder,
)
from mdagent.providers.polygon.channels import POLYGON_CHANNELS
from mdagent.records import Candle, DeadLetter, Quote, Record, StreamControl, Trade
from mdagent.text import storable_text

__all__ = [
    "PROVIDER",
    "PolygonParser",
    "auth_message",
    "parse_aggs_page",
    "parse_error_body",
    "parse_quotes_page",
    "parse_trades_page",
    "subscribe_message",
    "trade_id",
    "unsubscribe_message",
]

PROVIDER: Final = "polygon"

_NS_PER_MS: Final = 1_000_000
_INT64_MAX: Final = 2**63 - 1
_INT32_MAX: Final = 2**31 - 1
_INT16_MAX: Final = 2**15 - 1

# Field types with the bounds of the column they end up in.
_Ms = Annotated[int, msgspec.Meta(ge=0, le=_INT64_MAX // _NS_PER_MS)]  # ms -> ns fits int64
_Ns = Annotated[int, msgspec.Meta(ge=0, le=_INT64_MAX)]
_Int64 = Annotated[int, msgspec.Meta(ge=0, le=_INT64_MAX)]
_Int32 = Annotated[int, msgspec.Meta(ge=0, le=_INT32_MAX)]
_Int16 = Annotated[int, msgspec.Meta(ge=0, le=_INT16_MAX)]
_Symbol = Annotated[str, msgspec.Meta(min_length=1)]
# Trade ids are strings on the wire; an integer is accepted too (same key).
_TradeId = Annotated[str, msgspec.Meta(min_length=1)] | int
# A WebSocket price or decimal size: untyped, so a JSON number arrives as its
# literal text (float_hook=str) or as an int; ``number_text`` validates it.
# A decimal string (as ``ds`` is sent) is accepted too: the same exact value.
_Number: TypeAlias = Any


# --------------------------------------------------------------------------
# WebSocket events, tagged on "ev". Unknown fields are ignored by msgspec, so
# new provider fields (trft, dav, otc, ...) do not turn events into dead letters.


class _WsTrade(msgspec.Struct, tag_field="ev", tag="T", frozen=True, gc=False):
    sym: _Symbol
    i: _TradeId
    x: _Int32
    p: _Number
    s: _Int64
    t: _Ms
    q: _Int64 | None = None
    z: _Int16 | None = None
    c: tuple[_Int32, ...] | None = None
    trfi: _Int32 | None = None
    ds: _Number = None
    e: _Int32 | None = None


class _WsQuote(msgspec.Struct, tag_field="ev", tag="Q", frozen=True, gc=False):
    sym: _Symbol
    bp: _Number
    bs: _Int64
    ap: _Number
    as_: _Int64 = msgspec.field(name="as")
    t: _Ms = msgspec.field()
    q: _Int64 = msgspec.field()  # required: quotes.seq is part of the primary key
    bx: _Int32 | None = None
    ax: _Int32 | None = None
    c: _Int32 | None = None
    i: tuple[_Int32, ...] | None = None
    z: _Int16 | None = None


class _WsAggFields(msgspec.Struct, frozen=True, gc=False):
    sym: _Symbol
    o: _Number
    h: _Number
    l: _Number  # noqa: E741 - the wire name
    c: _Number
    v: _Number  # exact whether the feed sends 4110 or 4.11e3
    s: _Ms
    e: _Ms
    vw: _Number = None
    dv: _Number = None


class _WsMinuteAgg(_WsAggFields, tag_field="ev", tag="AM", frozen=True, gc=False):
    pass


class _WsSecondAgg(_WsAggFields, tag_field="ev", tag="A", frozen=True, gc=False):
    pass


class _WsStatus(msgspec.Struct, tag_field="ev", tag="status", frozen=True, gc=False):
    status: str
    message: str = ""


_WsEvent: TypeAlias = _WsTrade | _WsQuote | _WsMinuteAgg | _WsSecondAgg | _WsStatus


class _EvProbe(msgspec.Struct, frozen=True, gc=False):
    """Reads only ``ev`` of an element that failed, to name its source."""

    ev: str


# --------------------------------------------------------------------------
# REST results. v3 timestamps are nanoseconds beyond 2**53: typed int, msgspec
# decodes them exactly (a float literal is refused rather than rounded).


class _RestTrade(msgspec.Struct, frozen=True, gc=False):
    id: _TradeId
    exchange: _Int32
    price: Decimal
    # Decimal: the OpenAPI type is "number"; fractional sizes predate decimal_size.
    size: Decimal
    sip_timestamp: _Ns
    sequence_number: _Int64 | None = None
    tape: _Int16 | None = None
    conditions: tuple[_Int32, ...] | None = None
    trf_id: _Int32 | None = None
    correction: _Int32 | None = None
    decimal_size: Decimal | None = None


class _RestQuote(msgspec.Struct, frozen=True, gc=False):
    bid_price: Decimal
    bid_size: Decimal
    ask_price: Decimal
    ask_size: Decimal
    sip_timestamp: _Ns
    sequence_number: _Int64
    bid_exchange: _Int32 | None = None
    ask_exchange: _Int32 | None = None
    conditions: tuple[_Int32, ...] | None = None
    indicators: tuple[_Int32, ...] | None = None
    tape: _Int16 | None = None


class _RestAgg(msgspec.Struct, frozen=True, gc=False):
    t: _Ms
    o: Decimal
    h: Decimal
    l: Decimal  # noqa: E741 - the wire name
    c: Decimal
    v: Decimal  # REST volumes may be float literals such as 1.33454e+06
    vw: Decimal | None = None
    n: _Int64 | None = None


# Polygon omits "results" when a page is empty.
class _TradesPage(msgspec.Struct, frozen=True, gc=False):
    results: list[_RestTrade] = []
    next_url: str | None = None


class _QuotesPage(msgspec.Struct, frozen=True, gc=False):
    results: list[_RestQuote] = []
    next_url: str | None = None


class _AggsPage(msgspec.Struct, frozen=True, gc=False):
    results: list[_RestAgg] = []
    next_url: str | None = None


class _RawPage(msgspec.Struct, frozen=True, gc=False):
    results: list[msgspec.Raw] = []
    next_url: str | None = None


class _ErrorBody(msgspec.Struct, frozen=True, gc=False):
    status: str = ""
    error: str = ""
    message: str = ""


# Decoders are reusable and thread-safe; building one per call would cost more
# than decoding a small frame.
_FRAME_DECODER: Final = msgspec.json.Decoder(list[_WsEvent], float_hook=str)
_RAW_LIST_DECODER: Final = msgspec.json.Decoder(list[msgspec.Raw])
_EVENT_DECODER: Final = msgspec.json.Decoder(_WsEvent, float_hook=str)
_EV_PROBE_DECODER: Final = msgspec.json.Decoder(_EvProbe)
_RAW_PAGE_DECODER: Final = msgspec.json.Decoder(_RawPage)
_ERROR_DECODER: Final = msgspec.json.Decoder(_ErrorBody)
_ENCODER: Final = msgspec.json.Encoder()

# What a decoder raises on bad input: malformed JSON or a schema mismatch
# (DecodeError, ValidationError), nesting deep enough to hit msgspec's
# recursion guard (RecursionError), or a str frame holding a lone surrogate,
# which cannot be encoded as UTF-8 (UnicodeEncodeError).
_DECODE_ERRORS: Final = (msgspec.DecodeError, RecursionError, UnicodeEncodeError)
# ... plus a decoded value the records cannot hold (NumberError is a ValueError).
_ELEMENT_ERRORS: Final = (*_DECODE_ERRORS, ValueError)
# The relaxed path (mdagent.numbers): whole numbers in exponent or float form
# where an integer is documented (wire-formats.md 2.7).
_RELAXED_DECODER: Final = relaxed_decoder()


# --------------------------------------------------------------------------
# Session messages


def auth_message(api_key: str) -> str:
    """The first message after ``connected``: ``{"action":"auth","params":KEY}``."""
    return _action("auth", api_key)


def subscribe_message(channels: Iterable[str], symbols: Iterable[str]) -> str:
    """Subscribe to every channel x symbol, e.g. ``params="T.AAPL,Q.AAPL,AM.*"``."""
    return _action("subscribe", _params(channels, symbols))


def unsubscribe_message(channels: Iterable[str], symbols: Iterable[str]) -> str:
    """The inverse of :func:`subscribe_message` for the same channels and symbols."""
    return _action("unsubscribe", _params(channels, symbols))


def subscription_params(channels: Iterable[str], symbols: Iterable[str]) -> list[str]:
    """The ``<ev>.<ticker>`` params of channels x symbols, in configured order, no repeats."""
    return _params(channels, symbols).split(",")


def change_message(action: Literal["subscribe", "unsubscribe"], params: Iterable[str]) -> str:
    """A ``subscribe`` / ``unsubscribe`` message for ready-made ``<ev>.<ticker>`` params."""
    return _action(action, ",".join(params))


def _action(action: str, params: str) -> str:
    return _ENCODER.encode({"action": action, "params": params}).decode()


def _params(channels: Iterable[str], symbols: Iterable[str]) -> str:
    channels = tuple(channels)
    symbols = tuple(symbols)
    unknown = [ch for ch in channels if ch not in POLYGON_CHANNELS]
    if unknown:
        raise ValueError(f"unknown Polygon channel(s) {unknown}; expected {POLYGON_CHANNELS}")
    if not channels or not symbols:
        raise ValueError("need at least one channel and one symbol")
    # dict.fromkeys: drop repeats but keep the configured order.
    pairs = dict.fromkeys(f"{ch}.{sym}" for ch in channels for sym in symbols)
    return ",".join(pairs)


# --------------------------------------------------------------------------
# Shared conversions


def trade_id(exchange: int, trf_id: int | None, provider_id: str | int) -> str:
    """The natural trade id, identical for the WebSocket and REST paths.

    Polygon promises a trade id unique only per ticker + exchange + TRF, not
    per ticker: two venues (or two TRFs of one venue) can report the same
    ``i``. Keyed on ``i`` alone, the second trade would be dropped by the
    primary key as a duplicate. Both paths carry exchange, TRF id and id
    (WebSocket ``x``/``trfi``/``i``, REST ``exchange``/``trf_id``/``id``), so
    the composite is the same wherever the trade was seen.
    """
    trf = "" if trf_id is None else trf_id
    return f"{exchange}:{trf}:{provider_id}"


def _optional_decimal_text(value: Decimal | None, field: str) -> str | None:
    return None if value is None else decimal_text(value, field)


def _optional_number_text(value: Any, field: str) -> str | None:
    return None if value is None else number_text(value, field)


def _conditions(values: tuple[int, ...] | None) -> tuple[int, ...] | None:
    # Both paths send [] or nothing for "no conditions"; store one spelling.
    return values or None


def _payload_text(data: bytes | str | memoryview | msgspec.Raw) -> str:
    return storable_text(data)


# --------------------------------------------------------------------------
# WebSocket frames


def _ws_trade(ev: _WsTrade, received_ns: int) -> Trade:
    # ds (2026-02) carries fractional sizes exactly; s is the whole-share size.
    size = number_text(ev.ds, "ds") if ev.ds is not None else str(ev.s)
    # Positional (the field order of Trade): keywords cost ~40% more per record.
    return Trade(
        PROVIDER,
        ev.sym,
        "T",
        trade_id(ev.x, ev.trfi, ev.i),
        ev.q,  # seq
        ev.t * _NS_PER_MS,  # ts_ns
        number_text(ev.p, "p"),  # price
        size,
        received_ns,
        None,  # is_buyer_maker
        ev.x,  # exchange
        ev.z,  # tape
        _conditions(ev.c),
        ev.trfi,  # trf_id
        None,  # first_trade_id
        None,  # last_trade_id
        ev.e,  # correction
    )


def _ws_quote(ev: _WsQuote, received_ns: int) -> Quote:
    # Positional (the field order of Quote), as in _ws_trade.
    return Quote(
        PROVIDER,
        ev.sym,
        "Q",
        ev.q,  # seq
        ev.t * _NS_PER_MS,  # ts_ns
        number_text(ev.bp, "bp"),  # bid_price
        str(ev.bs),  # bid_size
        number_text(ev.ap, "ap"),  # ask_price
        str(ev.as_),  # ask_size
        received_ns,
        ev.bx,  # bid_exchange
        ev.ax,  # ask_exchange
        None if ev.c is None else (ev.c,),  # conditions: the stream sends one
        _conditions(ev.i),  # indicators
        ev.z,  # tape
    )


def _ws_candle(ev: _WsAggFields, channel: str, interval: str, received_ns: int) -> Candle:
    volume = ev.dv if ev.dv is not None else ev.v
    return Candle(
        provider=PROVIDER,
        symbol=ev.sym,
        channel=channel,
        interval=interval,
        open_ts_ns=ev.s * _NS_PER_MS,
        close_ts_ns=ev.e * _NS_PER_MS,
        open=number_text(ev.o, "o"),
        high=number_text(ev.h, "h"),
        low=number_text(ev.l, "l"),
        close=number_text(ev.c, "c"),
        volume=number_text(volume, "dv" if ev.dv is not None else "v"),
        received_ns=received_ns,
        # Polygon re-sends corrected bars (late trades); none is ever final.
        # The writer keeps the newest by event_ts_ns, the receive time here.
        final=False,
        event_ts_ns=received_ns,
        vwap=_optional_number_text(ev.vw, "vw"),
        trade_count=None,  # the WebSocket bars carry no trade count
    )


def _ws_minute(ev: _WsMinuteAgg, received_ns: int) -> Candle:
    return _ws_candle(ev, "AM", "1m", received_ns)


def _ws_second(ev: _WsSecondAgg, received_ns: int) -> Candle:
    return _ws_candle(ev, "A", "1s", received_ns)


def _ws_status(ev: _WsStatus, received_ns: int) -> StreamControl:
    return StreamControl(provider=PROVIDER, kind="status", status=ev.status, message=ev.message)


# Dispatch on the decoded type: one dict lookup per event. Callable[[Any, ...]]
# because each converter takes its own event type.
_WS_CONVERTERS: Final[dict[type, Callable[[Any, int], Record]]] = {
    _WsTrade: _ws_trade,
    _WsQuote: _ws_quote,
    _WsMinuteAgg: _ws_minute,
    _WsSecondAgg: _ws_second,
    _WsStatus: _ws_status,
}
_KNOWN_EVENTS: Final = frozenset(("T", "Q", "AM", "A", "status"))


class PolygonParser:
    """Turns Polygon stocks WebSocket frames into canonical records.

    Stateless apart from the shared decoders; one instance may serve every
    Polygon stream. ``parse`` never raises on bad input.
    """

    def parse(self, frame: bytes | str, received_ns: int) -> list[Record]:
        """All records of one frame, in frame order; bad elements become dead letters."""
        try:
            events = _FRAME_DECODER.decode(frame)
            return [_WS_CONVERTERS[type(ev)](ev, received_ns) for ev in events]
        except _ELEMENT_ERRORS:
            # Rare: re-decode element by element to keep the good ones.
            return self._parse_slowly(frame, received_ns)

    def _parse_slowly(self, frame: bytes | str, received_ns: int) -> list[Record]:
        try:
            elements = _RAW_LIST_DECODER.decode(frame)
        except _DECODE_ERRORS as exc:
            reason = f"frame is not a JSON array: {exc}"
            return [DeadLetter(PROVIDER, "?", reason, _payload_text(frame), received_ns)]
        return [self._parse_element(raw, received_ns) for raw in elements]

    def _parse_element(self, raw: msgspec.Raw, received_ns: int) -> Record:
        try:
            try:
                ev = _EVENT_DECODER.decode(raw)
            except msgspec.ValidationError:
                # Maybe a whole number in float form (300.0, 2.405117e+06) in an
                # integer field: the same schema with the integer rule applied.
                ev = relaxed_convert(_RELAXED_DECODER.decode(raw), _WsEvent)
            return _WS_CONVERTERS[type(ev)](ev, received_ns)
        except _ELEMENT_ERRORS as exc:
            source, reason = _element_failure(raw, exc)
            return DeadLetter(PROVIDER, source, reason, _payload_text(raw), received_ns)


def _element_failure(raw: msgspec.Raw, exc: Exception) -> tuple[str, str]:
    """(source, reason) for a frame element that did not decode."""
    try:
        ev = _EV_PROBE_DECODER.decode(raw).ev
    except _DECODE_ERRORS:
        return "?", f"element is not an event object with a string `ev`: {exc}"
    if ev not in _KNOWN_EVENTS:
        return ev, f"unknown event type `ev`={ev!r}"
    return ev, f"invalid {ev} event: {exc}"


# --------------------------------------------------------------------------
# REST pages (backfill)


def _rest_trade(symbol: str, r: _RestTrade, received_ns: int) -> Trade:
    if r.decimal_size is not None:
        size = decimal_text(r.decimal_size, "decimal_size")
    else:
        size = decimal_text(r.size, "size")
    return Trade(
        provider=PROVIDER,
        symbol=symbol,
        channel="T",
        trade_id=trade_id(r.exchange, r.trf_id, r.id),
        seq=r.sequence_number,
        ts_ns=r.sip_timestamp,
        price=decimal_text(r.price, "price"),
        size=size,
        received_ns=received_ns,
        exchange=r.exchange,
        tape=r.tape,
        conditions=_conditions(r.conditions),
        trf_id=r.trf_id,
        correction=r.correction,
    )


def _rest_quote(symbol: str, r: _RestQuote, received_ns: int) -> Quote:
    return Quote(
        provider=PROVIDER,
        symbol=symbol,
        channel="Q",
        seq=r.sequence_number,
        ts_ns=r.sip_timestamp,
        bid_price=decimal_text(r.bid_price, "bid_price"),
        bid_size=decimal_text(r.bid_size, "bid_size"),
        ask_price=decimal_text(r.ask_price, "ask_price"),
        ask_size=decimal_text(r.ask_size, "ask_size"),
        received_ns=received_ns,
        bid_exchange=r.bid_exchange,
        ask_exchange=r.ask_exchange,
        conditions=_conditions(r.conditions),  # REST sends the whole list
        indicators=_conditions(r.indicators),
        tape=r.tape,
    )


# (multiplier, timespan) -> (channel, interval, bar length in ms)
_AGG_SPANS: Final = {
    (1, "minute"): ("AM", "1m", 60_000),
    (1, "second"): ("A", "1s", 1_000),
}


def _rest_candle(symbol: str, span: tuple[str, str, int], r: _RestAgg, received_ns: int) -> Candle:
    channel, interval, length_ms = span
    return Candle(
        provider=PROVIDER,
        symbol=symbol,
        channel=channel,
        interval=interval,
        open_ts_ns=r.t * _NS_PER_MS,
        # Same convention as the WebSocket "e": the exclusive window end.
        close_ts_ns=(r.t + length_ms) * _NS_PER_MS,
        open=decimal_text(r.o, "o"),
        high=decimal_text(r.h, "h"),
        low=decimal_text(r.l, "l"),
        close=decimal_text(r.c, "c"),
        volume=decimal_text(r.v, "v"),
        received_ns=received_ns,
        final=False,  # as on the stream: Polygon may still correct the bar
        event_ts_ns=received_ns,
        vwap=_optional_decimal_text(r.vw, "vw"),
        trade_count=r.n,
    )


_R = TypeVar("_R", _RestTrade, _RestQuote, _RestAgg)

_TRADES_PAGE_DECODER: Final = msgspec.json.Decoder(_TradesPage)
_QUOTES_PAGE_DECODER: Final = msgspec.json.Decoder(_QuotesPage)
_AGGS_PAGE_DECODER: Final = msgspec.json.Decoder(_AggsPage)
_TRADE_DECODER: Final = msgspec.json.Decoder(_RestTrade)
_QUOTE_DECODER: Final = msgspec.json.Decoder(_RestQuote)
_AGG_DECODER: Final = msgspec.json.Decoder(_RestAgg)


def _parse_page(
    body: bytes,
    page_decoder: msgspec.json.Decoder[Any],
    result_type: type[_R],
    result_decoder: msgspec.json.Decoder[_R],
    convert: Callable[[_R], Record],
    source: str,
    received_ns: int,
) -> tuple[list[Record], str | None]:
    """Fast path: the whole page typed at once; slow path: result by result."""
    try:
        page = page_decoder.decode(body)
        return [convert(r) for r in page.results], page.next_url
    except _ELEMENT_ERRORS:
        pass  # rare: find the bad results below and keep the good ones
    try:
        raw_page = _RAW_PAGE_DECODER.decode(body)
    except _DECODE_ERRORS as exc:
        reason = f"body is not a results page: {exc}"
        return [DeadLetter(PROVIDER, source, reason, _payload_text(body), received_ns)], None
    records: list[Record] = []
    for raw in raw_page.results:
        try:
            try:
                result = result_decoder.decode(raw)
            except msgspec.ValidationError:
                # Whole numbers in float form (REST "n":1.2005e+04), see numbers.py.
                result = relaxed_convert(_RELAXED_DECODER.decode(raw), result_type)
            records.append(convert(result))
        except _ELEMENT_ERRORS as exc:
            reason = f"invalid result: {exc}"
            records.append(DeadLetter(PROVIDER, source, reason, _payload_text(raw), received_ns))
    return records, raw_page.next_url


def parse_trades_page(
    ticker: str, body: bytes, received_ns: int
) -> tuple[list[Record], str | None]:
    """Records and ``next_url`` of one ``GET /v3/trades/{ticker}`` page.

    Trades get the same natural key as on the WebSocket (:func:`trade_id`,
    ``sip_timestamp`` truncated to ms by the writer) so overlap is stored once.
    """

    def convert(r: _RestTrade) -> Record:
        return _rest_trade(ticker, r, received_ns)

    source = f"/v3/trades/{ticker}"
    return _parse_page(
        body, _TRADES_PAGE_DECODER, _RestTrade, _TRADE_DECODER, convert, source, received_ns
    )


def parse_quotes_page(
    ticker: str, body: bytes, received_ns: int
) -> tuple[list[Record], str | None]:
    """Records and ``next_url`` of one ``GET /v3/quotes/{ticker}`` page."""

    def convert(r: _RestQuote) -> Record:
        return _rest_quote(ticker, r, received_ns)

    source = f"/v3/quotes/{ticker}"
    return _parse_page(
        body, _QUOTES_PAGE_DECODER, _RestQuote, _QUOTE_DECODER, convert, source, received_ns
    )


def parse_aggs_page(
    ticker: str, multiplier: int, timespan: str, body: bytes, received_ns: int
) -> tuple[list[Record], str | None]:
    """Candles and ``next_url`` of one ``GET /v2/aggs/ticker/{ticker}/range/...`` page.

    Only the two spans the stream channels have are supported: 1 minute (AM)
    and 1 second (A); anything else is a caller error (ValueError).
    """
    span = _AGG_SPANS.get((multiplier, timespan))
    if span is None:
        raise ValueError(
            f"unsupported aggregate span {multiplier}/{timespan}; expected 1/minute or 1/second"
        )

    def convert(r: _RestAgg) -> Record:
        return _rest_candle(ticker, span, r, received_ns)

    source = f"/v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}"
    return _parse_page(
        body, _AGGS_PAGE_DECODER, _RestAgg, _AGG_DECODER, convert, source, received_ns
    )


def parse_error_body(body: bytes) -> str | None:
    """The provider's error text of a failed REST call, or None if there is none.

    Handles ``{"status":"ERROR","error":"..."}`` and the entitlement form
    ``{"status":"NOT_AUTHORIZED","message":"..."}``; the status is prefixed so
    the text says which kind of failure it was.
    """
    try:
        err = _ERROR_DECODER.decode(body)
    except _DECODE_ERRORS:
        return None
    text = err.error or err.message
    if not text:
        return None
    return f"{err.status}: {text}" if err.status else text
