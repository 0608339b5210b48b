"""A faithful fake Binance spot venue on loopback: WebSocket streams + REST.

What it imitates (wire-formats.md section 1): raw ``/ws/<stream>`` and combined
``/stream?streams=a/b`` framing, ``timeUnit=MICROSECOND``, SUBSCRIBE /
UNSUBSCRIBE / LIST_SUBSCRIPTIONS / SET_PROPERTY / GET_PROPERTY, the 5 client
messages per second limit, 1024 streams per connection, server pings with a
pong deadline, ``serverShutdown``, the 24 h connection cap, and the REST
endpoints a recorder uses for backfill, with request weight and 429s.

How data flows. Each symbol has one deterministic :class:`SymbolMarket`
(``marketgen``); every connection keeps a cursor per symbol into that market
and the market generates the next event when the fastest connection needs it.
So all connections see the same trades, REST answers from the same history,
and the *content* is a pure function of the seed (timestamps are the
wall-clock generation/send time, so consumers can measure latency).

Speed. A connection turns its backlog into up to ``batch_frames`` text frames,
encoded from f-string templates (the values are integers and pre-formatted
decimal strings, so no escaping is ever needed), and writes them with one
``send_all`` through wsproto.

Faults (:class:`BinanceFaults`) are read on every frame, so
:meth:`FakeBinance.set_faults` takes effect immediately. Frame-count faults
count *data frames per connection* (duplicates and control replies excluded),
1-based: ``malformed_every_frames=10`` corrupts frames 10, 20, ...

Ground truth (:class:`GroundTruth`) records what was actually written to a
socket per (symbol, channel), what was generated but skipped, duplicated or
corrupted; it is visible in-process (``venue.truth``) and over HTTP on the
REST port (``GET /_fake/sent``, ``GET /_fake/stats``; ``GET /_fake/gc``: what the
process's cyclic GC walks).
"""

from __future__ import annotations

import json
import math
import re
import time
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from itertools import count
from typing import Any, Literal

import attrs
import orjson
import trio

from mdagent.testing.binance.marketgen import (
    KLINE_INTERVALS,
    SCALE,
    HistoryEvicted,
    KlineBar,
    MarketEvent,
    SymbolMarket,
    Trade,
    format_units,
    now_us,
    symbol_spec,
)
from mdagent.testing.httpserver import HttpRequest, HttpResponse, json_response
from mdagent.testing.validators import non_negative, positive_or_none
from mdagent.testing.venue import FakeVenue, VenueFaults, gc_view
from mdagent.testing.wsserver import (
    BytesReceived,
    IncomingWebSocket,
    PongReceived,
    ServerWebSocket,
    TextReceived,
    WebSocketClosed,
)

__all__ = [
    "DEFAULT_SYMBOLS",
    "BinanceFaults",
    "ChannelTruth",
    "FakeBinance",
    "GroundTruth",
    "IdRanges",
]

DEFAULT_SYMBOLS: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "BNBUSDT")
MAX_STREAMS_PER_CONNECTION = 1024
MALFORMED_KINDS: tuple[str, ...] = ("invalid_json", "bad_price", "missing_field")

# Lowercase letters of any script and digits: symbols may be non-ASCII since
# December 2025 (wire-formats.md 1.9). Upper-case letters do not match.
_SYMBOL_RE = re.compile(r"(?:(?![A-Z])[^\W_]){1,40}")
# WebSocket URIs over about 8,000 characters were reported refused (wire-formats.md 1.9).
MAX_URI_CHARS = 8000
_KLINE_RE = re.compile(r"kline_([0-9]+[smhdwM])(@\+08:00)?")
# Channels the venue knows. Those outside _DATA_CHANNELS are accepted (as the
# real venue would) but this fake never sends data on them.
_OTHER_CHANNEL_RE = re.compile(
    r"depth(5|10|20)?(@100ms|@1000ms)?|ticker|miniTicker|avgPrice|ticker_(1h|4h|1d)"
    r"|rollingWindowTicker|referencePrice|blockTrade"
)
_SPECIAL_STREAMS = frozenset({"!ticker@arr", "!miniTicker@arr", "!bookTicker"})
_ID_STR_RE = re.compile(r"[A-Za-z0-9]{1,36}")
_INT64 = (-(2**63), 2**63 - 1)

_TRADE, _AGG, _BOOK, _KLINE_FINAL, _KLINE_OPEN = range(5)
_CHANNEL_NAMES = {_TRADE: "trade", _AGG: "aggTrade", _BOOK: "bookTicker"}


@attrs.frozen
class BinanceFaults(VenueFaults):
    """Faults to inject. Frame counts are per connection and 1-based (see module doc).

    Shared switches (:class:`~mdagent.testing.venue.VenueFaults`) on this wire:
    a disconnect drops TCP (no close frame); a malformed frame is one of
    ``malformed_kinds`` in turn; a forced 429 carries code -1003.
    """

    # WebSocket
    skip_trade_ids: tuple[int, int] | None = None
    """Inclusive trade id range generated but never sent (trade frames, and aggTrade
    frames overlapping it); REST still has them, like a frame the client missed."""
    skip_symbol: str | None = None
    """Restrict ``skip_trade_ids`` to one symbol (upper-case); ``None`` = every symbol."""
    malformed_kinds: tuple[str, ...] = MALFORMED_KINDS
    """Cycled through by successive malformed frames."""
    shutdown_after_frames: int | None = attrs.field(default=None, validator=positive_or_none)
    """Send ``serverShutdown`` after the N-th data frame, then close (1001)."""
    silent_streams: tuple[str, ...] = ()
    """Stream names (``btcusdt@trade``) still subscribed (LIST_SUBSCRIPTIONS lists them)
    whose frames are never sent: a subscription the venue dropped silently."""
    silent_until_resubscribed: bool = False
    """A fresh subscription restores a silent stream, as at the real venue: a SUBSCRIBE
    of it (after its UNSUBSCRIBE, or while listed) on that connection, or a connection
    opened while this is set. Existing connections stay silent until they SUBSCRIBE."""
    control_reply_delay_s: float = attrs.field(default=0.0, validator=non_negative)
    """Wait this long before acting on and answering each control message
    (SUBSCRIBE, UNSUBSCRIBE, ...): a venue slow to confirm a subscription change."""
    # REST
    rest_delay_s: float = attrs.field(default=0.0, validator=non_negative)
    """Wait before answering each REST request."""
    rest_chunk_delay_s: float = attrs.field(default=0.0, validator=non_negative)
    """Trickle REST bodies in 512-byte pieces with this delay between them."""
    rest_absent_trade_ids: tuple[int, int] | None = None
    """Inclusive trade ids that REST answers as never having existed (its pages go
    past them, as Binance has been seen to skip ids); with ``skip_trade_ids`` over
    the same ids the stream never had them either."""
    rest_force_418: int = attrs.field(default=0, validator=non_negative)
    """Answer the next K weighted REST requests with 418 (an IP ban of
    ``rest_retry_after_s``; re-armed by ``set_faults``)."""
    rest_500_every: int | None = attrs.field(default=None, validator=positive_or_none)
    """Answer every N-th weighted REST request with 500 (its weight is spent)."""
    rest_truncate_every: int | None = attrs.field(default=None, validator=positive_or_none)
    """Answer every N-th weighted REST request with 200 and half its body."""

    def __attrs_post_init__(self) -> None:
        bad = set(self.malformed_kinds) - set(MALFORMED_KINDS)
        if bad or not self.malformed_kinds:
            raise ValueError(f"malformed_kinds must be a non-empty subset of {MALFORMED_KINDS}")
        if self.skip_trade_ids is not None and self.skip_trade_ids[0] > self.skip_trade_ids[1]:
            raise ValueError("skip_trade_ids must be (first, last) with first <= last")


# -- ground truth ------------------------------------------------------------------------------


class IdRanges:
    """A set of integers stored as sorted disjoint inclusive ranges.

    Ids mostly arrive in order, so adding is O(1) on the fast path; the
    memory is proportional to the number of gaps, not of ids.
    """

    __slots__ = ("_count", "_ranges")

    def __init__(self) -> None:
        self._ranges: list[list[int]] = []
        self._count = 0

    def add(self, value: int) -> bool:
        """Add ``value``; return False when it was already present."""
        ranges = self._ranges
        if ranges:
            last = ranges[-1]
            if value == last[1] + 1:
                last[1] = value
                self._count += 1
                return True
            if last[0] <= value <= last[1]:
                return False
        return self._insert(value)

    def _insert(self, value: int) -> bool:
        ranges = self._ranges
        i = bisect_left(ranges, value, key=lambda r: r[1])
        if i < len(ranges) and ranges[i][0] <= value:
            return False
        self._count += 1
        joins_left = i > 0 and ranges[i - 1][1] == value - 1
        joins_right = i < len(ranges) and ranges[i][0] == value + 1
        if joins_left and joins_right:
            ranges[i - 1][1] = ranges[i][1]
            del ranges[i]
        elif joins_left:
            ranges[i - 1][1] = value
        elif joins_right:
            ranges[i][0] = value
        else:
            ranges.insert(i, [value, value])
        return True

    def __contains__(self, value: int) -> bool:
        i = bisect_left(self._ranges, value, key=lambda r: r[1])
        return i < len(self._ranges) and self._ranges[i][0] <= value

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[int]:
        for lo, hi in self._ranges:
            yield from range(lo, hi + 1)

    def ranges(self) -> list[tuple[int, int]]:
        return [(lo, hi) for lo, hi in self._ranges]


class ChannelTruth:
    """What one (symbol, channel) actually sent, across all connections."""

    def __init__(self, symbol: str, channel: str, max_ids: int) -> None:
        self.symbol = symbol
        self.channel = channel
        self.frames = 0
        """Valid data frames written (duplicates and malformed excluded)."""
        self.duplicates = 0
        self.malformed = 0
        self.ids = IdRanges()
        """trade: ``t``; aggTrade: ``a`` (distinct ids sent)."""
        self.skipped = IdRanges()
        """Ids generated but deliberately not sent (``skip_trade_ids``)."""
        self.update_ids: deque[int] = deque(maxlen=max_ids)
        """bookTicker: ``u`` in send order (bounded)."""
        self.final_klines: dict[int, dict[str, Any]] = {}
        """kline: bars sent with ``x:true``, by open time (ms)."""
        self.latest_kline: dict[str, Any] | None = None

    def to_json(self, *, limit: int | None = None, market: SymbolMarket | None = None) -> Any:
        out: dict[str, Any] = {
            "symbol": self.symbol,
            "channel": self.channel,
            "frames": self.frames,
            "duplicates": self.duplicates,
            "malformed": self.malformed,
        }
        if self.channel in ("trade", "aggTrade"):
            out["count"] = len(self.ids)
            out["ranges"] = self.ids.ranges()
            out["skipped"] = self.skipped.ranges()
            if self.channel == "trade" and market is not None:
                trades: list[list[Any]] = []
                for trade_id in self.ids:
                    if limit is not None and len(trades) >= limit:
                        break
                    trade = market.trade(trade_id)
                    if trade is not None:
                        trades.append([trade.id, trade.p, trade.q])
                out["trades"] = trades
        elif self.channel == "bookTicker":
            ids = list(self.update_ids)
            out["update_ids"] = ids if limit is None else ids[-limit:]
        else:
            finals = [self.final_klines[k] for k in sorted(self.final_klines)]
            out["final"] = finals if limit is None else finals[-limit:]
            out["latest"] = self.latest_kline
        return out


class GroundTruth:
    """Per (symbol, channel) records of what the venue sent; see :class:`ChannelTruth`."""

    def __init__(self, max_ids: int) -> None:
        self._max_ids = max_ids
        self._channels: dict[tuple[str, str], ChannelTruth] = {}
        self.malformed_frames: deque[dict[str, Any]] = deque(maxlen=10_000)
        """Each corrupted frame: connection, frame number, kind, stream, the id it replaced."""

    def channel(self, symbol: str, channel: str) -> ChannelTruth:
        key = (symbol.upper(), channel)
        truth = self._channels.get(key)
        if truth is None:
            truth = self._channels[key] = ChannelTruth(key[0], channel, self._max_ids)
        return truth

    def channels(self) -> list[tuple[str, str]]:
        return sorted(self._channels)

    # Convenience views for tests.
    def trade_ids(self, symbol: str) -> list[int]:
        return list(self.channel(symbol, "trade").ids)

    def skipped_trade_ids(self, symbol: str) -> list[int]:
        return list(self.channel(symbol, "trade").skipped)

    def agg_ids(self, symbol: str) -> list[int]:
        return list(self.channel(symbol, "aggTrade").ids)

    def book_update_ids(self, symbol: str) -> list[int]:
        return list(self.channel(symbol, "bookTicker").update_ids)

    def final_klines(self, symbol: str, interval: str) -> list[dict[str, Any]]:
        truth = self.channel(symbol, f"kline_{interval}")
        return [truth.final_klines[k] for k in sorted(truth.final_klines)]


# -- per-connection streaming ------------------------------------------------------------------


class _ApiError(Exception):
    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status


class _KlineSub:
    __slots__ = ("bar", "interval", "last_push", "stream")

    def __init__(self, stream: str, interval: str) -> None:
        self.stream = stream
        self.interval = interval
        self.bar: KlineBar | None = None
        self.last_push = -math.inf


class _SymbolCursor:
    """A connection's position in one symbol's market and its channels there."""

    __slots__ = ("agg", "book", "klines", "market", "next_agg", "trade")

    def __init__(self, market: SymbolMarket) -> None:
        self.market = market
        self.next_agg = market.next_agg_id  # a new subscriber starts at the head
        self.trade: str | None = None
        self.agg: str | None = None
        self.book: str | None = None
        self.klines: dict[str, _KlineSub] = {}

    def empty(self) -> bool:
        return self.trade is None and self.agg is None and self.book is None and not self.klines


# A rendered frame: (text, symbol, channel code, sequence id or kline snapshot).
_Frame = tuple[str, str, int, Any]
# What a written frame means for the ground truth: (mark, symbol, channel code, id).
_Truth = tuple[int, str, int, Any]
_SENT, _DUPLICATE, _MALFORMED = range(3)


class _EndSession(Exception):
    """Raised inside a session task to end the connection with a recorded reason."""


class _Session:
    """One accepted WebSocket connection: receive, send, keepalive tasks."""

    def __init__(
        self, venue: FakeBinance, ws: ServerWebSocket, conn_id: int, combined: bool, micros: bool
    ) -> None:
        self.venue = venue
        self.ws = ws
        self.id = conn_id
        self.combined = combined
        self.micros = micros
        self.streams: dict[str, None] = {}  # insertion-ordered set
        # silent_streams this connection subscribed afresh (silent_until_resubscribed).
        faults = venue.faults
        self.restored = set(faults.silent_streams) if faults.silent_until_resubscribed else set()
        self.cursors: dict[str, _SymbolCursor] = {}
        self._rr = 0
        self.frames = 0  # data frames produced (the fault counter)
        self.frames_written = 0
        self._pending: deque[_Frame] = deque()
        self._wake = trio.Event()
        self._recv_times: deque[float] = deque()
        self._outstanding_pings: deque[bytes] = deque(maxlen=16)
        self._last_alive = trio.current_time()
        self._stall_until = -math.inf
        self.shutdown_requested = False
        self.end_reason: str | None = None
        self._cancel = trio.CancelScope()
        self._io_lock = trio.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        with self._cancel:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    self._guard, self._receive_loop, name=f"fake-binance:{self.id}:recv"
                )
                nursery.start_soon(
                    self._guard, self._send_loop, name=f"fake-binance:{self.id}:send"
                )
                nursery.start_soon(
                    self._guard, self._keepalive_loop, name=f"fake-binance:{self.id}:ping"
                )

    async def _guard(self, loop: Any) -> None:
        try:
            await loop()
        except WebSocketClosed as exc:
            self._end("client closed" if exc.by_peer else f"closed: {exc.reason}")
        except _EndSession:
            pass

    def _end(self, reason: str) -> None:
        if self.end_reason is None:
            self.end_reason = reason
        self._cancel.cancel()

    async def _close(self, code: int, reason: str) -> None:
        self._end(reason)
        # The session scope is cancelled now; give the close frame its own small budget.
        with trio.CancelScope(shield=True):
            await self.ws.close(code, reason)
        raise _EndSession

    def wake(self) -> None:
        self._wake.set()

    async def _sleep_until(self, deadline: float) -> None:
        """Sleep until ``deadline`` or until woken (subscription change, shutdown)."""
        if self._wake.is_set():
            self._wake = trio.Event()
            return
        with trio.move_on_at(deadline):
            await self._wake.wait()
        if self._wake.is_set():
            self._wake = trio.Event()

    def stall(self, seconds: float) -> None:
        self._stall_until = max(self._stall_until, trio.current_time() + seconds)

    # -- client messages ---------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        venue = self.venue
        while True:
            event = await self.ws.receive()
            now = trio.current_time()
            times = self._recv_times
            times.append(now)
            while times and times[0] <= now - 1.0:
                times.popleft()
            # Pings, pongs and control messages all count, as on the real venue.
            if len(times) > venue.max_client_msgs_per_s:
                await self._close(1008, "Too many requests")
            if isinstance(event, PongReceived):
                # Only a pong answering one of our pings keeps the connection alive.
                if event.payload in self._outstanding_pings:
                    self._last_alive = now
                    self._outstanding_pings.clear()
            elif isinstance(event, TextReceived | BytesReceived):
                text = (
                    event.text
                    if isinstance(event, TextReceived)
                    else event.data.decode("utf-8", "replace")
                )
                if venue.faults.control_reply_delay_s:
                    await trio.sleep(venue.faults.control_reply_delay_s)
                async with self._io_lock:
                    reply = self._control(text)
                    await self.ws.send_text(reply)

    def _control(self, text: str) -> str:
        venue = self.venue
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return venue._ws_error(3, f"Invalid JSON: {exc}", None)
        if not isinstance(request, dict):
            return venue._ws_error(3, "Invalid JSON: expected an object", None)
        req_id = request.get("id")
        if not _valid_request_id(req_id):
            return venue._ws_error(
                2, "Invalid request: request ID must be an unsigned integer", None
            )
        method = request.get("method")
        params = request.get("params", [])
        if method is None:
            return venue._ws_error(2, "Invalid request: missing field `method`", req_id)
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
                return venue._ws_error(
                    2, "Invalid request: params must be an array of strings", req_id
                )
            for name in params:
                if not _valid_stream(name):
                    return venue._ws_error(2, "Invalid request: invalid stream", req_id)
            if method == "SUBSCRIBE":
                new = [p for p in params if p not in self.streams]
                if len(self.streams) + len(set(new)) > MAX_STREAMS_PER_CONNECTION:
                    return venue._ws_error(2, "Invalid request: too many streams", req_id)
                for name in new:
                    self._subscribe(name)
                if venue.faults.silent_until_resubscribed:
                    self.restored.update(params)
            else:
                for name in params:
                    self._unsubscribe(name)
            self.wake()
            return orjson.dumps({"result": None, "id": req_id}).decode()
        if method == "LIST_SUBSCRIPTIONS":
            return orjson.dumps({"result": list(self.streams), "id": req_id}).decode()
        if method in ("SET_PROPERTY", "GET_PROPERTY"):
            if not isinstance(params, list) or not params or params[0] != "combined":
                return venue._ws_error(0, "Unknown property", req_id)
            if method == "GET_PROPERTY":
                return orjson.dumps({"result": self.combined, "id": req_id}).decode()
            if len(params) != 2 or not isinstance(params[1], bool):
                return venue._ws_error(1, "Invalid value type: expected Boolean", req_id)
            self.combined = params[1]
            return orjson.dumps({"result": None, "id": req_id}).decode()
        return venue._ws_error(
            2,
            f"Invalid request: unknown variant `{method}`, expected one of `SUBSCRIBE`, "
            "`UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`",
            req_id,
        )

    def _subscribe(self, name: str) -> None:
        self.streams[name] = None
        sym, _, channel = name.partition("@")
        market = self.venue._markets.get(sym.upper())
        if market is None:
            return  # accepted, like the real venue, but no data for unknown symbols
        cursor = self.cursors.get(market.symbol)
        if cursor is None:
            cursor = self.cursors[market.symbol] = _SymbolCursor(market)
        if channel == "trade":
            cursor.trade = name
        elif channel == "aggTrade":
            cursor.agg = name
        elif channel == "bookTicker":
            cursor.book = name
        else:
            match = _KLINE_RE.fullmatch(channel)
            if match is not None and match.group(2) is None:
                cursor.klines[match.group(1)] = _KlineSub(name, match.group(1))
        if cursor.empty():
            del self.cursors[market.symbol]

    def _unsubscribe(self, name: str) -> None:
        self.streams.pop(name, None)
        sym, _, channel = name.partition("@")
        cursor = self.cursors.get(sym.upper())
        if cursor is None:
            return
        if cursor.trade == name:
            cursor.trade = None
        if cursor.agg == name:
            cursor.agg = None
        if cursor.book == name:
            cursor.book = None
        match = _KLINE_RE.fullmatch(channel)
        if match is not None:
            cursor.klines.pop(match.group(1), None)
        if cursor.empty():
            del self.cursors[cursor.market.symbol]
            # Frames already expanded for it must not go out after the reply.
            self._pending = deque(f for f in self._pending if f[1] != cursor.market.symbol)

    # -- keepalive ---------------------------------------------------------------------------

    async def _keepalive_loop(self) -> None:
        venue = self.venue
        opened = trio.current_time()
        next_ping = opened + venue.ping_interval_s
        pings = count(1)
        while True:
            now = trio.current_time()
            if now - self._last_alive >= venue.pong_timeout_s:
                await self._close(1008, "Pong timeout")
            if now - opened >= venue.max_connection_age_s:
                await self._close(1001, "Connection age limit")
            if now >= next_ping:
                payload = str(next(pings)).encode()
                self._outstanding_pings.append(payload)
                await self.ws.ping(payload)
                next_ping = now + venue.ping_interval_s
            await trio.sleep_until(
                min(
                    next_ping,
                    self._last_alive + venue.pong_timeout_s,
                    opened + venue.max_connection_age_s,
                )
            )

    # -- data --------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        venue = self.venue
        pace_start = trio.current_time()
        paced = 0
        while True:
            now = trio.current_time()
            stall_until = max(self._stall_until, venue._stall_until)
            if self.shutdown_requested:
                await self._server_shutdown()
            if now < stall_until:
                await self._sleep_until(stall_until)
                pace_start, paced = trio.current_time(), 0
                continue
            if not self.cursors and not self._pending:
                await self._sleep_until(math.inf)
                pace_start, paced = trio.current_time(), 0
                continue
            budget = venue.batch_frames
            rate = venue.events_per_s
            if rate > 0:
                due = int((now - pace_start) * rate) - paced
                if due <= 0:
                    await self._sleep_until(pace_start + (paced + 1) / rate)
                    continue
                budget = min(budget, due)
            # Building and writing a batch is atomic with respect to control
            # requests, so no frame of a stream follows its UNSUBSCRIBE reply.
            async with self._io_lock:
                if venue.stalled():  # stalled while this task waited: nothing more goes
                    continue
                texts, truth, action = self._take_batch(budget)
                if texts:
                    venue.writes_in_flight += 1
                    try:
                        await self.ws.send_texts(texts)
                        self.frames_written += len(texts)
                        venue._record(truth)
                    finally:
                        venue.writes_in_flight -= 1
            if not texts and action is None:
                # Subscribed only to streams that produced nothing this round.
                await trio.lowlevel.checkpoint()
                continue
            paced += len(texts)
            if action == "disconnect":
                self._end("fault: disconnect")
                await self.ws.abort("fault: disconnect")
                raise _EndSession
            if action == "shutdown":
                await self._server_shutdown()
            if action == "stall":
                self.stall(venue.faults.stall_s)
            if action == "slow":
                # Like the real venue, a consumer too far behind is cut off.
                await self._close(1008, "Slow consumer")

    async def _server_shutdown(self) -> None:
        event_time = now_us() if self.micros else now_us() // 1000
        payload = f'{{"e":"serverShutdown","E":{event_time}}}'
        if self.combined:
            payload = f'{{"stream":"!serverShutdown","data":{payload}}}'
        await self.ws.send_text(payload)
        self.venue.counters["server_shutdowns"] += 1
        await self._close(1001, "Server shutdown")

    def _take_batch(self, budget: int) -> tuple[list[str], list[_Truth], str | None]:
        """Up to ``budget`` frames with faults applied, their truth records, and a
        follow-up action (``disconnect``/``shutdown``/``stall``/``slow``) that cuts the batch."""
        venue = self.venue
        faults = venue.faults
        texts: list[str] = []
        truth: list[_Truth] = []
        pending = self._pending
        idle_expansions = 0
        while len(texts) < budget:
            if not pending:
                if not self.cursors or idle_expansions > 64:
                    break
                if not self._expand_next():
                    return texts, truth, "slow"
                if not pending:
                    idle_expansions += 1
                    continue
            frame = pending.popleft()
            if faults.silent_streams:
                stream = _stream_of(frame)
                if stream in faults.silent_streams and stream not in self.restored:
                    continue
            self.frames += 1
            n = self.frames
            if faults.malformed_every_frames and n % faults.malformed_every_frames == 0:
                kinds = faults.malformed_kinds
                kind = kinds[(n // faults.malformed_every_frames - 1) % len(kinds)]
                texts.append(self._malform(frame, kind))
                truth.append((_MALFORMED, frame[1], frame[2], frame[3]))
            else:
                texts.append(frame[0])
                truth.append((_SENT, frame[1], frame[2], frame[3]))
                if faults.duplicate_every_frames and n % faults.duplicate_every_frames == 0:
                    texts.append(frame[0])
                    truth.append((_DUPLICATE, frame[1], frame[2], frame[3]))
            if faults.disconnect_every_frames and n % faults.disconnect_every_frames == 0:
                return texts, truth, "disconnect"
            if faults.shutdown_after_frames == n:
                return texts, truth, "shutdown"
            if faults.stall_after_frames == n:
                return texts, truth, "stall"
        return texts, truth, None

    def _malform(self, frame: _Frame, kind: str) -> str:
        text = frame[0]
        self.venue.truth.malformed_frames.append(
            {"conn": self.id, "frame": self.frames, "kind": kind, "symbol": frame[1],
             "channel": _channel_name(frame), "id": _frame_id(frame)}
        )  # fmt: skip
        if kind == "invalid_json":
            return text[: len(text) // 2]
        obj = orjson.loads(text)
        data = obj["data"] if self.combined and "data" in obj else obj
        target = data.get("k", data)
        if kind == "bad_price":
            for key in ("p", "b", "c"):
                if key in target:
                    target[key] = "12.34.56"
                    break
        else:  # missing_field: the sequence field a consumer relies on
            for key in ("t", "a", "u", "f"):
                if key in target:
                    del target[key]
                    break
        return orjson.dumps(obj).decode()

    def _expand_next(self) -> bool:
        """Render the next market event of the next symbol (round robin) into the
        pending frames. False when this connection fell behind the kept history."""
        cursors = list(self.cursors.values())
        self._rr = (self._rr + 1) % len(cursors)
        cursor = cursors[self._rr]
        try:
            event = cursor.market.event(cursor.next_agg)
        except HistoryEvicted:
            return False
        cursor.next_agg += 1
        self._render(cursor, event)
        return True

    def _render(self, cursor: _SymbolCursor, event: MarketEvent) -> None:
        venue = self.venue
        micros = self.micros
        combined = self.combined
        pending = self._pending
        symbol = cursor.market.symbol
        now = now_us()
        e_time = now if micros else now // 1000
        skip = venue._skip_range(symbol)
        if cursor.trade is not None:
            stream = cursor.trade
            for t in event.trades:
                if skip is not None and skip[0] <= t.id <= skip[1]:
                    venue._record_skip(symbol, "trade", t.id)
                    continue
                t_time = t.time_us if micros else t.time_us // 1000
                text = (
                    f'{{"e":"trade","E":{e_time},"s":"{symbol}","t":{t.id},"p":"{t.p}",'
                    f'"q":"{t.q}","T":{t_time},"m":{"true" if t.buyer_maker else "false"},'
                    f'"M":true}}'
                )
                if combined:
                    text = f'{{"stream":"{stream}","data":{text}}}'
                pending.append((text, symbol, _TRADE, t.id))
        if cursor.agg is not None:
            a = event.agg
            if skip is not None and a.first_id <= skip[1] and a.last_id >= skip[0]:
                venue._record_skip(symbol, "aggTrade", a.id)
            else:
                a_time = a.time_us if micros else a.time_us // 1000
                text = (
                    f'{{"e":"aggTrade","E":{e_time},"s":"{symbol}","a":{a.id},"p":"{a.p}",'
                    f'"q":"{a.q}","f":{a.first_id},"l":{a.last_id},"T":{a_time},'
                    f'"m":{"true" if a.buyer_maker else "false"},"M":true}}'
                )
                if combined:
                    text = f'{{"stream":"{cursor.agg}","data":{text}}}'
                pending.append((text, symbol, _AGG, a.id))
        book = event.book
        if cursor.book is not None and book is not None:
            text = (
                f'{{"u":{book.update_id},"s":"{symbol}","b":"{book.b}",'
                f'"B":"{book.B}","a":"{book.a}","A":"{book.A}"}}'
            )
            if combined:
                text = f'{{"stream":"{cursor.book}","data":{text}}}'
            pending.append((text, symbol, _BOOK, book.update_id))
        for sub in cursor.klines.values():
            self._render_kline(cursor.market, sub, event.trades, e_time)

    def _render_kline(
        self, market: SymbolMarket, sub: _KlineSub, trades: Sequence[Trade], e_time: int
    ) -> None:
        symbol = market.symbol
        for trade in trades:
            bar = sub.bar
            if bar is None:
                bar = market.partial_bar(sub.interval, trade.id - 1)
                if bar is not None and not bar.contains(trade.time_us):
                    bar = None
                if bar is None:
                    sub.bar = KlineBar(sub.interval, trade)
                else:
                    bar.add(trade)
                    sub.bar = bar
            elif bar.contains(trade.time_us):
                bar.add(trade)
            else:
                # The bar closed: its final version goes out before the next bar's first update.
                self._push_kline(symbol, sub, bar, closed=True, e_time=e_time)
                sub.bar = KlineBar(sub.interval, trade)
        now = trio.current_time()
        if sub.bar is not None and now - sub.last_push >= self.venue.kline_push_interval_s:
            sub.last_push = now
            self._push_kline(symbol, sub, sub.bar, closed=False, e_time=e_time)

    def _push_kline(
        self, symbol: str, sub: _KlineSub, bar: KlineBar, *, closed: bool, e_time: int
    ) -> None:
        k = bar.ws_fields(symbol, closed=closed, micros=self.micros)
        text = f'{{"e":"kline","E":{e_time},"s":"{symbol}","k":{k}}}'
        if self.combined:
            text = f'{{"stream":"{sub.stream}","data":{text}}}'
        snapshot = bar.snapshot()
        snapshot["x"] = closed
        self._pending.append((text, symbol, _KLINE_FINAL if closed else _KLINE_OPEN, snapshot))


def _channel_name(frame: _Frame) -> str:
    code = frame[2]
    if code in (_KLINE_FINAL, _KLINE_OPEN):
        return f"kline_{frame[3]['interval']}"
    return _CHANNEL_NAMES[code]


def _stream_of(frame: _Frame) -> str:
    return f"{frame[1].lower()}@{_channel_name(frame)}"


def _frame_id(frame: _Frame) -> Any:
    if frame[2] in (_KLINE_FINAL, _KLINE_OPEN):
        return frame[3]["t"]
    return frame[3]


def _valid_request_id(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return _INT64[0] <= value <= _INT64[1]
    return isinstance(value, str) and _ID_STR_RE.fullmatch(value) is not None


def _valid_stream(name: str) -> bool:
    if name in _SPECIAL_STREAMS:
        return True
    sym, sep, channel = name.partition("@")
    if not sep or _SYMBOL_RE.fullmatch(sym) is None:
        return False  # upper-case symbols land here, as on the real venue
    if channel in ("trade", "aggTrade", "bookTicker"):
        return True
    kline = _KLINE_RE.fullmatch(channel)
    if kline is not None:
        return kline.group(1) in KLINE_INTERVALS
    return _OTHER_CHANNEL_RE.fullmatch(channel) is not None


# -- REST --------------------------------------------------------------------------------------


def _int_param(params: Mapping[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise _ApiError(
            -1100,
            f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.",
        ) from None


def _limit_param(params: Mapping[str, str], default: int, maximum: int) -> int:
    limit = _int_param(params, "limit")
    if limit is None:
        return default
    if not 1 <= limit <= maximum:
        raise _ApiError(-1130, f"Invalid data sent for a parameter: limit must be in 1..{maximum}.")
    return limit


def _time_param(params: Mapping[str, str], name: str, *, end: bool) -> int | None:
    """A time parameter as µs. Values from 10**14 up are read as µs, smaller ones as ms
    (Binance accepts both); an ms end bound covers its whole millisecond."""
    value = _int_param(params, name)
    if value is None:
        return None
    if value >= 10**14:
        return value
    return value * 1000 + (999 if end else 0)


_DEPTH_WEIGHTS = ((100, 5), (500, 25), (1000, 50), (5000, 250))


def _depth_weight(params: Mapping[str, str]) -> int:
    try:
        limit = int(params.get("limit") or 100)
    except ValueError:
        return 5
    return next((w for bound, w in _DEPTH_WEIGHTS if limit <= bound), 250)


_WEIGHTS: dict[str, Any] = {
    "/api/v3/aggTrades": 4,
    "/api/v3/historicalTrades": 25,
    "/api/v3/trades": 25,
    "/api/v3/klines": 2,
    "/api/v3/exchangeInfo": 20,
    "/api/v3/depth": _depth_weight,
    "/api/v3/ping": 1,
    "/api/v3/time": 1,
}


# -- the venue ---------------------------------------------------------------------------------


class FakeBinance(FakeVenue[BinanceFaults]):
    """The fake venue. Construct, then ``ws_url, rest_url = await nursery.start(venue.serve)``.

    The API shared by every fake venue is :class:`~mdagent.testing.venue.FakeVenue`'s;
    ``ws_url`` is the bare ``ws://host:port`` (append ``/ws/<stream>`` or
    ``/stream?streams=...``). Counters of its own: ``server_shutdowns``, and
    :attr:`disconnect_reasons` by reason.

    Options (all fixed for the venue's life except faults):

    - ``events_per_s``: data frames per second *per connection*; 0 = as fast as possible.
    - ``ping_interval_s`` / ``pong_timeout_s``: server keepalive (Binance: 20 s / 60 s).
    - ``max_client_msgs_per_s``: client frames (any kind) per rolling second before disconnect.
    - ``kline_push_interval_s``: least time between open-bar kline updates per stream
      (Binance: 1 s for ``1s`` bars, 2 s otherwise; 0 = after every event).
    - ``max_history``: trades kept per symbol for REST and for lagging connections
      (~250 bytes each).
    - ``rest_weight_limit`` / ``rest_weight_window_s``: request weight per window (6000/min).
    - ``ws_error_style``: ``"live"`` answers bad requests like the production servers
      (``{"error":{"code":2,"msg":...},"id":1}``); ``"documented"`` uses the docs' flat
      ``{"code":2,"msg":...,"id":1}``.
    """

    def __init__(
        self,
        *,
        symbols: Sequence[str] | None = None,
        seed: int = 1,
        events_per_s: float = 1000.0,
        faults: BinanceFaults | None = None,
        ping_interval_s: float = 20.0,
        pong_timeout_s: float = 60.0,
        max_connection_age_s: float = 24 * 3600.0,
        max_client_msgs_per_s: int = 5,
        kline_push_interval_s: float = 1.0,
        max_history: int = 200_000,
        rest_weight_limit: int = 6000,
        rest_weight_window_s: float = 60.0,
        batch_frames: int = 256,
        ws_error_style: Literal["live", "documented"] = "live",
    ) -> None:
        if batch_frames < 1:
            raise ValueError("batch_frames must be >= 1")
        super().__init__(
            symbols=symbols or DEFAULT_SYMBOLS,
            seed=seed,
            events_per_s=events_per_s,
            faults=faults or BinanceFaults(),
        )
        self.ping_interval_s = ping_interval_s
        self.pong_timeout_s = pong_timeout_s
        self.max_connection_age_s = max_connection_age_s
        self.max_client_msgs_per_s = max_client_msgs_per_s
        self.kline_push_interval_s = kline_push_interval_s
        self.max_history = max_history
        self.rest_weight_limit = rest_weight_limit
        self.rest_weight_window_s = rest_weight_window_s
        self.batch_frames = batch_frames
        self.ws_error_style = ws_error_style
        self._markets = {
            s: SymbolMarket(symbol_spec(s, seed), seed, max_history=max_history)
            for s in self.symbols
        }
        self.truth = GroundTruth(max_ids=max_history)
        self._sessions: dict[int, _Session] = {}
        self._conn_ids = count(1)
        self.disconnect_reasons: Counter[str] = Counter()
        # (path, weight used in the window, request weight, seconds into the window)
        # of every request refused for going over the weight budget
        self.rest_refused_log: list[tuple[str, int, int, float]] = []
        # Whole 200 answers by path (no 500, no truncated body): lets a test
        # tell exchangeInfo reads from history pages.
        self.rest_served_by_path: Counter[str] = Counter()
        self._weight_window = -1
        self._weight_used = 0

    # -- public API --------------------------------------------------------------------------

    def sent_trades(self, symbol: str) -> list[Trade]:
        """The trades (id, price, qty, ...) whose trade frame was sent, in id order,
        as far as the bounded history still holds them."""
        market = self.market(symbol)
        trades = (market.trade(i) for i in self.truth.channel(symbol, "trade").ids)
        return [t for t in trades if t is not None]

    def market(self, symbol: str) -> SymbolMarket:
        """The generated market (and history) of ``symbol``."""
        return self._markets[symbol.upper()]

    def _faults_armed(self, faults: BinanceFaults) -> None:
        self._force_418_left = faults.rest_force_418

    def stall(self, seconds: float) -> None:
        """Stop data on every open connection for ``seconds`` (sockets and pings stay up)."""
        super().stall(seconds)
        for session in self._sessions.values():
            session.wake()

    def request_server_shutdown(self) -> int:
        """Make every open connection send ``serverShutdown`` and close. Returns how many."""
        for session in self._sessions.values():
            session.shutdown_requested = True
            session.wake()
        return len(self._sessions)

    def stats(self) -> dict[str, Any]:
        return {
            "connections_open": len(self._sessions),
            "connections_total": self.counters["connections"],
            "disconnect_reasons": dict(self.disconnect_reasons),
            "frames_sent": self.counters["frames_sent"]
            + sum(s.frames_written for s in self._sessions.values()),
            "server_shutdowns_sent": self.counters["server_shutdowns"],
            "rest_requests": self.counters["rest_requests"],
            "rest_429s": self.counters["rest_429s"],
            "rest_418s": self.counters["rest_418s"],
            "rest_500s": self.counters["rest_500s"],
            "rest_truncated": self.counters["rest_truncated"],
            "rest_weight_refused": self.counters["rest_weight_refused"],
            "rest_weighted_requests": self.counters["rest_weighted_requests"],
            "rest_weight_used": self._weight_used,
            "connections": [
                {
                    "id": s.id,
                    "streams": list(s.streams),
                    "combined": s.combined,
                    "micros": s.micros,
                    "frames": s.frames_written,
                }
                for s in self._sessions.values()
            ],
            "markets": {sym: m.history_stats() for sym, m in self._markets.items()},
            "faults": attrs.asdict(self.faults),
        }

    # -- WebSocket ---------------------------------------------------------------------------

    def _ws_error(self, code: int, msg: str, req_id: Any) -> str:
        if self.ws_error_style == "live":
            return orjson.dumps({"error": {"code": code, "msg": msg}, "id": req_id}).decode()
        return orjson.dumps({"code": code, "msg": msg, "id": req_id}).decode()

    async def _handle_ws(self, incoming: IncomingWebSocket) -> None:
        request = incoming.request
        if len(request.target) > MAX_URI_CHARS:
            self.counters["rejected_long_uris"] += 1
            await incoming.reject(414, b"URI Too Long")
            return
        unit = request.query.get("timeUnit", "MILLISECOND").upper()
        if unit not in ("MILLISECOND", "MICROSECOND"):
            await incoming.reject(
                400, orjson.dumps({"code": 2, "msg": "Invalid request: invalid timeUnit"})
            )
            return
        if request.path == "/stream":
            combined = True
            names = [n for n in request.query.get("streams", "").split("/") if n]
        elif request.path == "/ws" or request.path.startswith("/ws/"):
            combined = False
            names = [n for n in request.path[len("/ws/") :].split("/") if n]
        else:
            await incoming.reject(404, b'{"code":-1000,"msg":"Not found."}')
            return
        bad = [n for n in names if not _valid_stream(n)]
        if bad or len(set(names)) > MAX_STREAMS_PER_CONNECTION:
            msg = (
                f"Invalid request: invalid stream {bad[0]!r}"
                if bad
                else "Invalid request: too many streams"
            )
            await incoming.reject(400, orjson.dumps({"code": 2, "msg": msg}))
            return
        ws = await incoming.accept()
        conn_id = next(self._conn_ids)
        session = _Session(self, ws, conn_id, combined, unit == "MICROSECOND")
        for name in dict.fromkeys(names):
            session._subscribe(name)
        self._sessions[conn_id] = session
        self.counters["connections"] += 1
        try:
            await session.run()
        finally:
            del self._sessions[conn_id]
            self.counters["frames_sent"] += session.frames_written
            self.disconnect_reasons[session.end_reason or "cancelled"] += 1

    def _skip_range(self, symbol: str) -> tuple[int, int] | None:
        faults = self.faults
        if faults.skip_trade_ids is None:
            return None
        if faults.skip_symbol is not None and faults.skip_symbol.upper() != symbol:
            return None
        return faults.skip_trade_ids

    def _record_skip(self, symbol: str, channel: str, ident: int) -> None:
        self.truth.channel(symbol, channel).skipped.add(ident)

    def _record(self, frames: list[_Truth]) -> None:
        truth = self.truth
        cache: dict[tuple[str, int, str], ChannelTruth] = {}
        for mark, symbol, code, ident in frames:
            interval = ident["interval"] if code >= _KLINE_FINAL else ""
            key = (symbol, code, interval)
            ch = cache.get(key)
            if ch is None:
                name = f"kline_{interval}" if interval else _CHANNEL_NAMES[code]
                ch = cache[key] = truth.channel(symbol, name)
            if mark == _MALFORMED:
                ch.malformed += 1
                continue
            if mark == _DUPLICATE:
                ch.duplicates += 1
                continue
            ch.frames += 1
            if code in (_TRADE, _AGG):
                ch.ids.add(ident)
            elif code == _BOOK:
                ch.update_ids.append(ident)
            else:
                ch.latest_kline = ident
                if code == _KLINE_FINAL:
                    ch.final_klines[ident["t"]] = ident

    # -- REST --------------------------------------------------------------------------------

    async def _handle_http(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith("/_fake/"):
            return self._handle_control(request)
        faults = self.faults
        if faults.rest_delay_s:
            await trio.sleep(faults.rest_delay_s)
        response = self._rest_response(request)
        if faults.rest_chunk_delay_s:
            response = attrs.evolve(
                response, chunk_size=512, chunk_delay_s=faults.rest_chunk_delay_s
            )
        return response

    @property
    def weight_header(self) -> str:
        """``X-MBX-USED-WEIGHT-<n><unit>`` for this venue's window (``1M`` for 60 s)."""
        window = self.rest_weight_window_s
        for unit_s, letter in ((86400, "D"), (3600, "H"), (60, "M"), (1, "S")):
            if window >= unit_s and window % unit_s == 0:
                return f"X-MBX-USED-WEIGHT-{int(window // unit_s)}{letter}"
        return "X-MBX-USED-WEIGHT-1M"

    def _rest_response(self, request: HttpRequest) -> HttpResponse:
        self.counters["rest_requests"] += 1
        weight_of = _WEIGHTS.get(request.path)
        if weight_of is None or request.method != "GET":
            return json_response(404, {"code": -1000, "msg": "Not found."})
        weight = weight_of(request.query) if callable(weight_of) else weight_of
        # Windows follow the wall clock, as Binance's do (a minute's weight
        # resets at the minute), so a client in another process can align.
        now = time.time()
        window = int(now // self.rest_weight_window_s)
        if window != self._weight_window:
            self._weight_window, self._weight_used = window, 0
        retry_after = max(1, math.ceil((window + 1) * self.rest_weight_window_s - now))
        faults = self.faults
        if self._force_418_left > 0:
            self._force_418_left -= 1
            return self._banned(faults.rest_retry_after_s)
        if self._take_forced_429():
            return self._too_many(faults.rest_retry_after_s)
        if self._weight_used + weight > self.rest_weight_limit:
            self.counters["rest_weight_refused"] += 1
            into = now - window * self.rest_weight_window_s
            self.rest_refused_log.append((request.path, self._weight_used, weight, round(into, 3)))
            return self._too_many(retry_after)
        self._weight_used += weight
        self.counters["rest_weighted_requests"] += 1
        headers = ((self.weight_header, str(self._weight_used)),)
        nth = self.counters["rest_weighted_requests"]
        if faults.rest_500_every and nth % faults.rest_500_every == 0:
            self.counters["rest_500s"] += 1
            return json_response(
                500,
                {
                    "code": -1001,
                    "msg": "Internal error; unable to process your request. Please try again.",
                },
                headers,
            )
        micros = request.headers.get("x-mbx-time-unit", "").upper() == "MICROSECOND"
        try:
            body = self._rest_body(request.path, request.query, micros)
        except _ApiError as exc:
            return json_response(exc.status, {"code": exc.code, "msg": exc.msg}, headers)
        response = json_response(200, body, headers)
        if faults.rest_truncate_every and nth % faults.rest_truncate_every == 0:
            self.counters["rest_truncated"] += 1
            response = attrs.evolve(response, body=response.body[: len(response.body) // 2])
        else:
            self.rest_served_by_path[request.path] += 1
        return response

    def _too_many(self, retry_after: int) -> HttpResponse:
        self.counters["rest_429s"] += 1
        return json_response(
            429,
            {
                "code": -1003,
                "msg": f"Too much request weight used; current limit is {self.rest_weight_limit} "
                "request weight per 1 MINUTE. Please use WebSocket Streams for live updates "
                "to avoid polling the API.",
            },
            (
                ("Retry-After", str(retry_after)),
                (self.weight_header, str(self._weight_used)),
            ),
        )

    def _banned(self, retry_after: int) -> HttpResponse:
        self.counters["rest_418s"] += 1
        return json_response(
            418,
            {
                "code": -1003,
                "msg": f"Way too much request weight used; IP banned until {int((time.time() + retry_after) * 1000)}. Please use WebSocket Streams for live updates to avoid bans.",
            },
            (("Retry-After", str(retry_after)),),
        )

    def _symbol(self, params: Mapping[str, str]) -> SymbolMarket:
        raw = params.get("symbol")
        if not raw:
            raise _ApiError(
                -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."
            )
        market = self._markets.get(raw)  # the REST API is case-sensitive: BTCUSDT, not btcusdt
        if market is None:
            raise _ApiError(-1121, "Invalid symbol.")
        return market

    def _rest_body(self, path: str, params: Mapping[str, str], micros: bool) -> Any:
        div = 1 if micros else 1000
        if path == "/api/v3/ping":
            return {}
        if path == "/api/v3/time":
            return {"serverTime": now_us() // div}
        if path == "/api/v3/exchangeInfo":
            return self._exchange_info(params, div)
        market = self._symbol(params)
        if path == "/api/v3/depth":
            limit = _limit_param(params, 100, 5000)
            last_id, bids, asks = market.depth(limit)
            return {"lastUpdateId": last_id, "bids": bids, "asks": asks}
        if path in ("/api/v3/trades", "/api/v3/historicalTrades"):
            limit = _limit_param(params, 500, 1000)
            from_id = _int_param(params, "fromId") if path.endswith("historicalTrades") else None
            absent = self.faults.rest_absent_trade_ids
            extra = 0 if absent is None else absent[1] - absent[0] + 1
            if from_id is None:
                trades = market.trades_by_time(None, None, limit)
            else:
                # ``limit`` trades that exist, from the first existing id >= fromId.
                trades = market.trades_from_id(from_id, limit + extra)
            if absent is not None:
                trades = [t for t in trades if not absent[0] <= t.id <= absent[1]][:limit]
            return [
                {
                    "id": t.id,
                    "price": t.p,
                    "qty": t.q,
                    "quoteQty": format_units(t.price * t.qty // SCALE),
                    "time": t.time_us // div,
                    "isBuyerMaker": t.buyer_maker,
                    "isBestMatch": True,
                }
                for t in trades
            ]
        if path == "/api/v3/aggTrades":
            limit = _limit_param(params, 500, 1000)
            from_id = _int_param(params, "fromId")
            start = _time_param(params, "startTime", end=False)
            end = _time_param(params, "endTime", end=True)
            if from_id is not None and (start is not None or end is not None):
                raise _ApiError(-1128, "Combination of optional parameters invalid.")
            if from_id is not None:
                aggs = market.aggs_from_id(from_id, limit)
            else:
                aggs = market.aggs_by_time(start, end, limit)
            return [
                {"a": a.id, "p": a.p, "q": a.q, "f": a.first_id, "l": a.last_id,
                 "T": a.time_us // div, "m": a.buyer_maker, "M": True}
                for a in aggs
            ]  # fmt: skip
        if path == "/api/v3/klines":
            interval = params.get("interval")
            if not interval:
                raise _ApiError(
                    -1102,
                    "Mandatory parameter 'interval' was not sent, was empty/null, or malformed.",
                )
            if interval not in KLINE_INTERVALS:
                raise _ApiError(-1120, "Invalid interval.")
            limit = _limit_param(params, 500, 1000)
            start = _time_param(params, "startTime", end=False)
            end = _time_param(params, "endTime", end=True)
            return [
                bar.rest_row(micros=micros) for bar in market.klines(interval, start, end, limit)
            ]
        raise AssertionError(f"unrouted path {path}")

    def _exchange_info(self, params: Mapping[str, str], div: int) -> Any:
        wanted: list[str] = list(self.symbols)
        if params.get("symbol"):
            wanted = [params["symbol"]]
        elif params.get("symbols"):
            try:
                wanted = json.loads(params["symbols"])
            except json.JSONDecodeError:
                raise _ApiError(-1100, "Illegal characters found in parameter 'symbols'.") from None
            if not isinstance(wanted, list) or not all(isinstance(s, str) for s in wanted):
                raise _ApiError(-1100, "Illegal characters found in parameter 'symbols'.")
        if any(s not in self._markets for s in wanted):
            raise _ApiError(-1121, "Invalid symbol.")
        symbols = []
        for sym in wanted:
            spec = self._markets[sym].spec
            symbols.append(
                {
                    "symbol": sym,
                    "status": "BREAK" if sym in self.faults.delisted else "TRADING",
                    "baseAsset": spec.base_asset,
                    "baseAssetPrecision": 8,
                    "quoteAsset": spec.quote_asset,
                    "quotePrecision": 8,
                    "quoteAssetPrecision": 8,
                    "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"],
                    "isSpotTradingAllowed": True,
                    "isMarginTradingAllowed": False,
                    "filters": [
                        {
                            "filterType": "PRICE_FILTER",
                            "minPrice": format_units(spec.tick),
                            "maxPrice": format_units(1_000_000 * SCALE),
                            "tickSize": format_units(spec.tick),
                        },
                        {
                            "filterType": "LOT_SIZE",
                            "minQty": format_units(spec.step),
                            "maxQty": format_units(9_000_000 * SCALE),
                            "stepSize": format_units(spec.step),
                        },
                    ],
                    "permissions": [],
                    "permissionSets": [["SPOT"]],
                }
            )
        return {
            "timezone": "UTC",
            "serverTime": now_us() // div,
            "rateLimits": [
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    **self._weight_interval(),
                    "limit": self.rest_weight_limit,
                },
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
                {
                    "rateLimitType": "RAW_REQUESTS",
                    "interval": "MINUTE",
                    "intervalNum": 5,
                    "limit": 300000,
                },
            ],
            "exchangeFilters": [],
            "symbols": symbols,
        }

    def _weight_interval(self) -> dict[str, Any]:
        """exchangeInfo's ``interval`` / ``intervalNum`` of the weight window."""
        window = self.rest_weight_window_s
        if window % 60 == 0:
            return {"interval": "MINUTE", "intervalNum": int(window // 60)}
        return {"interval": "SECOND", "intervalNum": max(1, round(window))}

    def prefill_history(self, start_us: int, end_us: int, events_per_s: float) -> None:
        """Generate every symbol's market from ``start_us`` to ``end_us`` (wall-clock µs)
        at ``events_per_s`` before anything streams: REST then has that much history
        (``max_history`` bounds it) and the streams go on from its end."""
        for market in self._markets.values():
            market.generate_past(start_us, end_us, events_per_s)

    def _handle_control(self, request: HttpRequest) -> HttpResponse:
        """Test-only endpoints (no request weight): ground truth, stats and fault control."""
        params = request.query
        if request.path == "/_fake/stats" and request.method == "GET":
            return json_response(200, self.stats())
        if request.path == "/_fake/gc" and request.method == "GET":
            return json_response(200, gc_view())
        if request.path == "/_fake/sent" and request.method == "GET":
            symbol = params.get("symbol", "").upper()
            channel = params.get("channel", "")
            if symbol not in self._markets:
                return json_response(400, {"code": -1121, "msg": "Invalid symbol."})
            if not channel:
                return json_response(
                    200, [ch for sym, ch in self.truth.channels() if sym == symbol]
                )
            limit = params.get("limit")
            return json_response(
                200,
                self.truth.channel(symbol, channel).to_json(
                    limit=int(limit) if limit and limit.isdigit() else None,
                    market=self._markets[symbol],
                ),
            )
        if request.path == "/_fake/faults" and request.method == "GET":
            return json_response(200, attrs.asdict(self.faults))
        if request.path == "/_fake/faults" and request.method == "POST":
            try:
                changes = orjson.loads(request.body or b"{}")
                for name in ("skip_trade_ids", "rest_absent_trade_ids"):
                    if isinstance(changes.get(name), list):
                        changes[name] = tuple(changes[name])
                if isinstance(changes.get("malformed_kinds"), list):
                    changes["malformed_kinds"] = tuple(changes["malformed_kinds"])
                faults = self.set_faults(**changes)
            except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
                return json_response(400, {"code": -1000, "msg": str(exc)})
            return json_response(200, attrs.asdict(faults))
        if request.path == "/_fake/shutdown" and request.method == "POST":
            return json_response(200, {"connections": self.request_server_shutdown()})
        if request.path == "/_fake/stall" and request.method == "POST":
            try:
                seconds = float(params.get("seconds", "0"))
            except ValueError:
                return json_response(400, {"code": -1000, "msg": "seconds must be a number"})
            self.stall(seconds)
            return json_response(200, {"stalled_s": seconds})
        return json_response(404, {"code": -1000, "msg": "Not found."})
