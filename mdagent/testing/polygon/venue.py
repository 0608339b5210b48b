"""A fake Polygon.io / Massive stocks venue on loopback: WebSocket + REST, with faults.

It speaks the wire formats of wire-formats.md section 2 closely enough that the
agent cannot tell it from the real service in the ways that matter to it:

- WebSocket at any path ending in ``/stocks``: ``connected`` greeting, ``auth``
  (``auth_success`` / ``auth_failed`` / ``auth_timeout``), one connection per
  API key (``max_connections``), ``subscribe``/``unsubscribe`` with ``T``, ``Q``,
  ``AM``, ``A`` params and ``*``, then JSON-array frames mixing event types and
  tickers; bars are re-sent with corrections when late trades arrive.
- REST on its own port: ``/v3/trades``, ``/v3/quotes`` (ns timestamps, desc by
  default, ``next_url`` with an opaque cursor), ``/v2/aggs`` from the same
  history, ``/v3/reference/tickers`` listing the streamed tickers,
  400/401/403/429 in Polygon's error shape, an optional free-tier limit.

Data come from :mod:`mdagent.testing.polygon.marketgen`; REST answers are built from
the very trades the stream carried (plus those a fault kept off the stream).
What the stream really sent is recorded as ground truth (:class:`SentLog`,
also at ``GET /_fake/sent`` and ``GET /_fake/stats`` on the REST port).

Hot path: every event is encoded once, when generated; a frame is a join of
texts and many frames go out in one ``send_texts`` (one ``send_all``).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import gc
import json
import math
import random
import time
from bisect import bisect_left, bisect_right
from collections import Counter, deque
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from itertools import compress
from typing import Any, Final

import attrs
import orjson
import trio

from mdagent.testing.httpserver import HttpRequest, HttpResponse, json_response
from mdagent.testing.polygon.eventlog import EventLog, subscription_key
from mdagent.testing.polygon.marketgen import (
    NS_PER_MS,
    SIZE_SCALE,
    AggBar,
    StockBar,
    StockMarket,
    StockQuote,
    StockTrade,
    TickerMarket,
    WsEvent,
    aggregate,
)
from mdagent.testing.polygon.replay import ReplayMarket
from mdagent.testing.validators import non_negative, positive_or_none
from mdagent.testing.venue import FakeVenue, VenueFaults
from mdagent.testing.wsserver import (
    BytesReceived,
    IncomingWebSocket,
    ServerWebSocket,
    TextReceived,
    WebSocketClosed,
)

__all__ = [
    "FakePolygon",
    "PolygonFaults",
    "SentLog",
]

_EVENT_TYPES: Final = ("T", "Q", "AM", "A")
_NS_PER_DAY: Final = 86_400 * 1_000_000_000
_MS_PER_DAY: Final = 86_400_000
_MAX_LIMIT: Final = 50_000
_AGG_SPANS_MS: Final = {"second": 1_000, "minute": 60_000, "hour": 3_600_000, "day": _MS_PER_DAY}
# Frames per send_texts when unpaced: enough to amortise the syscall, small
# enough that a fault boundary or an unsubscribe is honoured promptly.
_FRAMES_PER_WRITE: Final = 32
# Log entries one pull may scan for a sparse subscription before yielding.
_SCAN_LIMIT: Final = 20_000
# The shared event log is trimmed past the slowest connection, but never kept
# longer than this: a connection that far behind is dropped as a slow consumer,
# which is what Polygon does when its per-connection buffer fills [2.4].
_MAX_BACKLOG: Final = 1_000_000
# At max rate (events_per_s=0) the connections share one tape: one that read
# faster ran ahead until a slower one fell out of the kept backlog and was
# dropped as a slow consumer (the bench's 2-connection max-rate phase, once the
# venue replayed its tape). So at max rate the venue serves as fast as its
# slowest connection reads: a connection this far ahead waits.
_MAX_LEAD: Final = _MAX_BACKLOG // 4
_LEAD_WAIT_S: Final = 0.002

_TRIM_AT: Final = 1 << 16
# A pacer that fell this far behind (a slow client) restarts instead of bursting.
_MAX_PACE_LAG_S: Final = 1.0

_MSG_429: Final = (
    "You've exceeded the maximum requests per minute, "
    "please wait or upgrade your subscription to continue."
)
_MSG_NOT_ENTITLED: Final = (
    "You are not entitled to this data. Please upgrade your plan at https://massive.com/pricing"
)
# /v3/reference/tickers: default and largest page.
_TICKERS_DEFAULT_LIMIT: Final = 100
_TICKERS_MAX_LIMIT: Final = 1000
_MSG_MAX_CONNECTIONS: Final = (
    "Maximum number of websocket connections exceeded. You have reached the connection "
    "limit for your account. Please contact support at https://massive.com/contact "
    "to increase your limit."
)


def _status(status: str, message: str) -> str:
    return orjson.dumps([{"ev": "status", "status": status, "message": message}]).decode()


_CONNECTED: Final = _status("connected", "Connected Successfully")
_AUTH_SUCCESS: Final = _status("auth_success", "authenticated")
_AUTH_FAILED: Final = _status("auth_failed", "authentication failed")
_AUTH_TIMEOUT: Final = _status("auth_timeout", "No authentication request received.")
_MAX_CONNECTIONS: Final = _status("max_connections", _MSG_MAX_CONNECTIONS)


@attrs.frozen
class PolygonFaults(VenueFaults):
    """Misbehaviour to inject (``None`` / 0 disables). Frame counts are per connection,
    1-based, and count data frames only (not statuses, duplicates or garbage frames):
    ``malformed_every_frames=10`` affects frames 10, 20, ...

    Shared switches (:class:`~mdagent.testing.venue.VenueFaults`) on this wire:
    a disconnect closes with 1001 (or drops TCP with ``disconnect_abort``); a
    malformed frame carries a bad element (``"p":"abc"``, no ``sym``, an
    unknown ``ev``, in turn), and every 4th such injection is instead a whole
    non-JSON frame sent before the (intact) data frame; a stall happens once
    per connection (subscribe statuses are still answered).
    """

    disconnect_abort: bool = False
    """Drop TCP without a close frame (the client sees 1006) instead of closing with 1001."""
    skip_after_events: int = attrs.field(default=0, validator=non_negative)
    skip_events: int = attrs.field(default=0, validator=non_negative)
    """Once, counted from :meth:`FakePolygon.set_faults`: after ``skip_after_events``
    stream events (over all connections), leave the next ``skip_events`` off the
    stream. They stay in the REST history and are recorded as skipped."""
    skip_symbol: str | None = None
    """Restrict the skip (and its counting) to one ticker; ``None`` = every ticker."""
    away_steps: int = attrs.field(default=0, validator=non_negative)
    """The market trades on while a client is away: every connection after the first
    starts ``away_steps`` market steps past the head. Those events are never sent
    (recorded as skipped) and are in the REST history, like a live reconnect's hole."""
    rest_500_every: int | None = attrs.field(default=None, validator=positive_or_none)
    """Answer every N-th authenticated REST request with 500."""
    rest_truncate_every: int | None = attrs.field(default=None, validator=positive_or_none)
    """Answer every N-th authenticated REST request with 200 and half its body."""
    rest_delay_s: float = attrs.field(default=0.0, validator=non_negative)
    """Wait this long before answering each REST request (slow pages)."""
    rest_not_entitled: tuple[str, ...] = ()
    """REST kinds (the path's second part: ``trades``, ``quotes``, ``aggs``,
    ``reference``) answered 403 ``NOT_AUTHORIZED``, as for data the plan does
    not include (wire-formats.md 2.6)."""
    max_connection_age_s: float | None = attrs.field(default=None, validator=positive_or_none)
    """End every connection this long after it opened (1001 ``Connection age limit``);
    Polygon documents no such limit, so it is a fault here."""
    silent_streams: tuple[str, ...] = ()
    """Subscription params (``T.AAPL``) still subscribed (statuses answered as usual)
    whose events are never sent: a subscription the venue dropped silently."""
    silent_until_resubscribed: bool = False
    """A fresh subscription restores a silent stream: a ``subscribe`` of it on that
    connection, or a connection opened while this is set."""


class SentLog:
    """Ground truth: what the stream actually sent, per (ticker, ev), plus what was skipped.

    Bounded: each (ticker, ev) list keeps its newest ``limit`` entries
    (``dropped`` counts the rest). With several connections an event sent to
    each is recorded once per send and de-duplicated by the accessors.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._sent: dict[tuple[str, str], list[Any]] = {}
        self._skipped: dict[tuple[str, str], list[Any]] = {}
        self.malformed: list[str] = []
        self.dropped = 0

    def _add(self, store: dict[tuple[str, str], list[Any]], events: Sequence[WsEvent]) -> None:
        limit = self.limit
        for event in events:
            key = (event.ticker, event.ev)
            items = store.get(key)
            if items is None:
                items = store[key] = []
            items.append(event.item)
            if len(items) > limit + limit // 8:
                excess = len(items) - limit
                del items[:excess]
                self.dropped += excess

    def record_sent(self, events: Sequence[WsEvent]) -> None:
        self._add(self._sent, events)

    def record_skipped(self, events: Sequence[WsEvent]) -> None:
        self._add(self._skipped, events)

    def trades(self, ticker: str, *, skipped: bool = False) -> list[StockTrade]:
        """Trades in send order, each once."""
        items = (self._skipped if skipped else self._sent).get((ticker, "T"), [])
        unique = {(t.exchange, t.trf_id, t.id): t for t in reversed(items)}
        return list(reversed(unique.values()))

    def quotes(self, ticker: str, *, skipped: bool = False) -> list[StockQuote]:
        items = (self._skipped if skipped else self._sent).get((ticker, "Q"), [])
        unique = {(q.sip_ns, q.seq): q for q in reversed(items)}
        return list(reversed(unique.values()))

    def bars(self, ticker: str, ev: str, *, skipped: bool = False) -> list[StockBar]:
        """The latest version sent of each bar, by window start."""
        if ev not in ("AM", "A"):
            raise ValueError(f"bars are AM or A, not {ev!r}")
        latest: dict[int, StockBar] = {}
        for bar in (self._skipped if skipped else self._sent).get((ticker, ev), []):
            old = latest.get(bar.start_ms)
            if old is None or bar.version > old.version:
                latest[bar.start_ms] = bar
        return [latest[s] for s in sorted(latest)]

    def bar_sends(self, ticker: str, ev: str) -> list[StockBar]:
        """Every bar version as sent, corrections included, in send order."""
        return list(self._sent.get((ticker, ev), []))

    def events(self, ticker: str, ev: str, *, skipped: bool = False) -> list[Any]:
        if ev == "T":
            return self.trades(ticker, skipped=skipped)
        if ev == "Q":
            return self.quotes(ticker, skipped=skipped)
        return self.bars(ticker, ev, skipped=skipped)

    def counts(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for (ticker, ev), items in self._sent.items():
            counts[f"{ev}.{ticker}"] += len(items)
        for (ticker, ev), items in self._skipped.items():
            counts[f"skipped:{ev}.{ticker}"] += len(items)
        return dict(sorted(counts.items()))


def _snapshot(item: StockTrade | StockQuote | StockBar) -> dict[str, Any]:
    """Plain JSON for ``/_fake/sent``: prices and sizes as exact strings."""
    if isinstance(item, StockTrade):
        return {
            "id": item.id,
            "exchange": item.exchange,
            "trf_id": item.trf_id,
            "natural_id": item.natural_id,
            "price": item.price_text,
            "size": item.size_text,
            "sip_ns": item.sip_ns,
            "t": item.t_ms,
            "seq": item.seq,
            "late": item.late,
        }
    if isinstance(item, StockQuote):
        return {
            "seq": item.seq,
            "sip_ns": item.sip_ns,
            "t": item.t_ms,
            "bid_exchange": item.bid_exchange,
            "bid_price": item.bid_text,
            "bid_size": item.bid_size,
            "ask_exchange": item.ask_exchange,
            "ask_price": item.ask_text,
            "ask_size": item.ask_size,
        }
    bar = item.bar
    return {
        "s": bar.start_ms,
        "e": bar.end_ms,
        "version": item.version,
        "o": bar.open,
        "h": bar.high,
        "l": bar.low,
        "c": bar.close,
        "v": bar.volume_text,
        "vw": bar.vwap,
        "n": bar.n,
    }


class _Session:
    """One authenticated connection's subscription, cursor into the log, and counters."""

    def __init__(
        self, serial: int, ws: ServerWebSocket, frame_rng: random.Random, tickers: frozenset[str]
    ) -> None:
        self.serial = serial
        self.tickers = tickers
        self.ws = ws
        self.key = ""
        self.cursor = 0
        self.frame_rng = frame_rng
        self.subs: set[str] = set()
        # silent_streams this connection subscribed afresh (silent_until_resubscribed).
        self.restored: set[str] = set()
        self.silent: frozenset[str] = frozenset()
        self.end_reason: str | None = None
        self.pairs: frozenset[tuple[str, str]] = frozenset()
        self.star: frozenset[str] = frozenset()
        # The subscription keys (EventLog.keys) of what is sent: pairs, and
        # star for every ticker of the venue.
        self.wanted: frozenset[str] = frozenset()
        # Held while subscriptions change (and their statuses go out) and while
        # a data batch is built and sent, so that no event of a sub arrives
        # after its "unsubscribed" status.
        self.lock = trio.Lock()
        self.changed = trio.Event()
        self.frames = 0
        self.events = 0
        self.malformed_serial = 0
        self.stalled = False
        self.lagging = False
        # Log entries this session's cursor has passed, its own events or not.
        self.scanned = 0

    def refresh(self, faults: PolygonFaults | None = None) -> None:
        """Recompute what is sent from the subscription (and, if given, the silent faults)."""
        if faults is not None:
            self.silent = frozenset(set(faults.silent_streams) - self.restored)
        pairs = set()
        star = set()
        for param in self.subs:
            if param in self.silent:
                continue
            ev, _, ticker = param.partition(".")
            if ticker == "*":
                star.add(ev)
            else:
                pairs.add((ev, ticker))
        self.pairs = frozenset(pairs)
        self.star = frozenset(star)
        self.wanted = frozenset(
            [subscription_key(ev, t) for ev, t in pairs]
            + [subscription_key(ev, t) for ev in star for t in self.tickers]
        )
        self.changed.set()
        self.changed = trio.Event()

    def wants_any(self, tickers: frozenset[str]) -> bool:
        return bool(self.star) or any(ticker in tickers for _, ticker in self.pairs)


class _BadRequest(Exception):
    """A REST parameter is invalid; the message is the ``error`` text of the 400."""


def _parse_date_ns(text: str) -> int | None:
    if len(text) == 10 and text[4] == "-" and text[7] == "-":
        try:
            day = date.fromisoformat(text)
        except ValueError:
            return None
        return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 10**9
    return None


def _parse_ns_or_date(name: str, text: str) -> tuple[int, bool]:
    """``(ns, is_date)``: a nanosecond integer or a ``YYYY-MM-DD`` day (UTC midnight)."""
    day = _parse_date_ns(text)
    if day is not None:
        return day, True
    if text.isdigit():
        return int(text), False
    raise _BadRequest(f"invalid {name}: {text!r} is neither a nanosecond timestamp nor YYYY-MM-DD")


def _parse_limit(query: dict[str, str] | Any, default: int) -> int:
    text = query.get("limit")
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= _MAX_LIMIT:
        raise _BadRequest(f"invalid limit: {text!r} (1 to {_MAX_LIMIT})")
    return int(text)


_V3_CURSOR_FIELDS: Final[dict[str, Any]] = {
    "lo": (int, type(None)),
    "hi": (int, type(None)),
    "o": str,
    "n": int,
}
_AGG_CURSOR_FIELDS: Final[dict[str, Any]] = {
    "len": int,
    "lo": int,
    "hi": int,
    "o": str,
    "n": int,
    "adj": bool,
}


def _encode_cursor(state: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(state)).decode().rstrip("=")


def _decode_cursor(text: str, kind: str, ticker: str) -> dict[str, Any]:
    try:
        state = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, orjson.JSONDecodeError, ValueError) as exc:
        raise _BadRequest("invalid cursor") from exc
    if not isinstance(state, dict) or state.get("k") != kind or state.get("t") != ticker:
        raise _BadRequest("invalid cursor")
    # A tampered cursor must be a 400, never an exception inside the server.
    fields = _AGG_CURSOR_FIELDS if kind == "aggs" else _V3_CURSOR_FIELDS
    for name, types in fields.items():
        value = state.get(name)
        if not isinstance(value, types) or isinstance(value, bool) is not (types is bool):
            raise _BadRequest("invalid cursor")
    if state["o"] not in ("asc", "desc") or not 1 <= state["n"] <= _MAX_LIMIT:
        raise _BadRequest("invalid cursor")
    after = state.get("a")
    if kind == "aggs":
        ok = after is None or (isinstance(after, int) and not isinstance(after, bool))
        ok = ok and state["len"] > 0
    else:
        ok = after is None or (
            isinstance(after, list)
            and len(after) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in after)
        )
    if not ok:
        raise _BadRequest("invalid cursor")
    return state


def _ints(values: Sequence[int]) -> str:
    return "[" + ",".join(map(str, values)) + "]"


def _trade_json(t: StockTrade) -> str:
    parts = ["{"]
    if t.conditions:
        parts.append(f'"conditions":{_ints(t.conditions)},')
    if t.size % SIZE_SCALE:
        parts.append(f'"decimal_size":"{t.size_text}",')
    parts.append(
        f'"exchange":{t.exchange},"id":"{t.id}","participant_timestamp":{t.participant_ns},'
        f'"price":{t.price_text},"sequence_number":{t.seq},"sip_timestamp":{t.sip_ns},'
        f'"size":{t.size // SIZE_SCALE},"tape":{t.tape}'
    )
    if t.trf_id is not None:
        parts.append(f',"trf_id":{t.trf_id},"trf_timestamp":{t.trf_ns}')
    parts.append("}")
    return "".join(parts)


def _quote_json(q: StockQuote) -> str:
    text = (
        f'{{"ask_exchange":{q.ask_exchange},"ask_price":{q.ask_text},"ask_size":{q.ask_size},'
        f'"bid_exchange":{q.bid_exchange},"bid_price":{q.bid_text},"bid_size":{q.bid_size},'
    )
    if q.condition is not None:
        text += f'"conditions":[{q.condition}],'
    if q.indicators is not None:
        text += f'"indicators":{_ints(q.indicators)},'
    return text + (
        f'"participant_timestamp":{q.participant_ns},"sequence_number":{q.seq},'
        f'"sip_timestamp":{q.sip_ns},"tape":{q.tape}}}'
    )


def _agg_json(b: AggBar) -> str:
    return (
        f'{{"v":{b.volume_text},"vw":{b.vwap},"o":{b.open},"c":{b.close},"h":{b.high},'
        f'"l":{b.low},"t":{b.start_ms},"n":{b.n}}}'
    )


class FakePolygon(FakeVenue[PolygonFaults]):
    """The fake venue. Build it, then ``await nursery.start(fake.serve)`` for the URLs.

    The API shared by every fake venue is :class:`~mdagent.testing.venue.FakeVenue`'s;
    ``ws_url`` ends in the ``/stocks`` cluster path, ``truth`` is a
    :class:`SentLog`. Counters of its own: ``events_sent``, ``auth_failed``,
    ``fault_disconnects``, ``skipped_events`` and the like (see :meth:`stats`).

    ``events_per_s`` paces each connection through the market's tape (the
    shared log of every ticker's events): its cursor passes that many events
    per second, and it sends those it subscribed to (0: as fast as the client
    reads). A connection subscribed to everything gets ``events_per_s``
    events per second; several connections splitting the tickers get that
    rate between them, each event about when it was stamped;
    ``events_per_frame`` is a fixed count or a ``(min, max)`` range drawn per
    frame. ``clock_ns`` feeds event timestamps (a :class:`SteppingClock` makes
    runs fully reproducible). ``free_tier`` limits REST to
    ``free_tier_limit`` requests per ``free_tier_window_s`` per key.
    ``reference_page_max``: the most tickers one ``/v3/reference/tickers``
    page holds (smaller than the client's ``limit`` makes a short list page);
    ``rest_page_max`` likewise for ``/v3/trades`` and ``/v3/quotes`` pages.
    ``replay_events`` > 0: the streams play a tape of that many generated
    events in a loop, shifted in time each pass (:class:`ReplayMarket`:
    ~0.5 us of venue CPU per event sent against ~5 us generating live, for
    max-rate benchmarks); it needs
    ``record_sent=False`` (no ground truth is kept of replayed events), and
    REST history does not hold the replayed events.
    """

    ws_path = "/stocks"
    ws_max_message_bytes = 2 << 20  # subscribe messages may be 1 MB

    def __init__(
        self,
        *,
        symbols: Sequence[str],
        api_key: str = "test-key",
        extra_api_keys: Sequence[str] = (),
        seed: int = 1,
        events_per_s: float = 100.0,
        events_per_frame: int | tuple[int, int] = (20, 50),
        faults: PolygonFaults | None = None,
        auth_timeout_s: float = 10.0,
        free_tier: bool = False,
        free_tier_limit: int = 5,
        free_tier_window_s: float = 60.0,
        clock_ns: Callable[[], int] = time.time_ns,
        max_history: int = 1_000_000,
        record_sent: bool = True,
        late_trade_ratio: float = 0.02,
        reference_page_max: int = _TICKERS_MAX_LIMIT,
        rest_page_max: int = _MAX_LIMIT,
        replay_events: int = 0,
    ) -> None:
        lo, hi = (
            (events_per_frame, events_per_frame)
            if isinstance(events_per_frame, int)
            else events_per_frame
        )
        if not 1 <= lo <= hi:
            raise ValueError(f"events_per_frame must be >= 1 (min <= max), got {events_per_frame}")
        self._skip_seen = 0
        super().__init__(
            symbols=symbols,
            seed=seed,
            events_per_s=events_per_s,
            faults=faults or PolygonFaults(),
        )
        self.api_keys = frozenset((api_key, *extra_api_keys))
        self._frame_min, self._frame_max = lo, hi
        self.auth_timeout_s = auth_timeout_s
        self.free_tier = free_tier
        self.free_tier_limit = free_tier_limit
        self.free_tier_window_s = free_tier_window_s
        self.record_sent = record_sent
        self.reference_page_max = reference_page_max
        self.rest_page_max = rest_page_max
        self.stock_market = StockMarket(
            self.symbols,
            seed,
            clock_ns=clock_ns,
            max_history=max_history,
            late_ratio=late_trade_ratio,
        )
        # Where the streams' events come from: the live market, or a replay of it.
        self._events: StockMarket | ReplayMarket = self.stock_market
        if replay_events:
            if record_sent:
                raise ValueError("a replaying venue keeps no ground truth: pass record_sent=False")
            self._events = ReplayMarket(
                list(self.symbols),
                seed,
                events=replay_events,
                now_ns=clock_ns(),
                late_ratio=late_trade_ratio,
            )
        self._ticker_set = frozenset(self.symbols)
        self.truth = SentLog(limit=max_history)
        # The shared log of generated stream events; connections hold absolute cursors.
        self._log = EventLog()
        self._streaming: dict[int, _Session] = {}
        self._by_key: dict[str, _Session] = {}
        # How authenticated connections ended: "client closed", "Connection age
        # limit", "fault: disconnect", ...
        self.disconnect_reasons: Counter[str] = Counter()
        self._serial = 0
        self._request_rng = random.Random(f"mdagent-polygon-requests:{seed}")
        self._rest_times: dict[str, deque[float]] = {}

    # -- control -----------------------------------------------------------------------------

    def _faults_armed(self, faults: PolygonFaults) -> None:
        # The skip window counts from the latest set_faults.
        self._skip_seen = 0
        # (Also called while the base class is built, before any connection.)
        for session in getattr(self, "_streaming", {}).values():
            session.refresh(faults)

    def market(self, symbol: str) -> TickerMarket:
        """The generated market (and REST history) of ``symbol``."""
        return self.stock_market.markets[symbol.upper()]

    def stats(self) -> dict[str, Any]:
        return {
            **dict(sorted(self.counters.items())),
            "faults": attrs.asdict(self.faults),
            "connections_open": len(self._streaming),
            "disconnect_reasons": dict(self.disconnect_reasons),
            "market_steps": self._events.steps,
            "log_entries": len(self._log),
            "sent_counts": self.truth.counts(),
            "sent_dropped": self.truth.dropped,
        }

    @classmethod
    def options_from_cli(cls, args: argparse.Namespace) -> dict[str, Any]:
        return {
            **super().options_from_cli(args),
            "api_key": getattr(args, "api_key", "test-key"),
            "extra_api_keys": [
                k.strip() for k in getattr(args, "extra_api_keys", "").split(",") if k.strip()
            ],
            "record_sent": not getattr(args, "no_record_sent", False),
            "late_trade_ratio": getattr(args, "late_trade_ratio", 0.02),
            "replay_events": getattr(args, "replay", 0),
        }

    def _owns_process(self) -> None:
        # Once serving in its own process (``mdagent fake-venue``), everything
        # built so far is frozen out of the cyclic GC (:func:`gc.freeze`). That
        # takes the per-ticker history lists out of every full collection, which
        # would otherwise walk millions of list slots each time, a sizeable share
        # of what a venue streaming at full speed spends; collections also run
        # less often.
        gc.collect()
        gc.freeze()
        # Each event leaves a few tracked objects behind (history keys, bar
        # state); at the default gen0 threshold the collector ran every few
        # hundred events: 25% of the venue's time at full speed, growing
        # with the history (measured on StockMarket.run, 800k events).
        gc.set_threshold(50_000, 20, 100)

    # -- WebSocket ---------------------------------------------------------------------------

    async def _handle_ws(self, incoming: IncomingWebSocket) -> None:
        if not incoming.request.path.rstrip("/").endswith("/stocks"):
            await incoming.reject(404, b'{"error":"unknown cluster; use /stocks"}')
            return
        ws = await incoming.accept()
        self._serial += 1
        self.counters["connections"] += 1
        frame_rng = random.Random(f"mdagent-polygon-frames:{self.seed}:{self._serial}")
        session = _Session(self._serial, ws, frame_rng, self._ticker_set)
        try:
            await ws.send_text(_CONNECTED)
            if not await self._authenticate(session):
                return
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._send_loop, session, nursery.cancel_scope)
                    nursery.start_soon(self._age_limit, session, nursery.cancel_scope)
                    await self._receive_loop(session)
                    nursery.cancel_scope.cancel()
            finally:
                del self._streaming[session.serial]
                del self._by_key[session.key]
                self.disconnect_reasons[session.end_reason or "cancelled"] += 1
        except WebSocketClosed:
            pass  # the client left; the server layer drops the socket

    async def _authenticate(self, session: _Session) -> bool:
        ws = session.ws
        with trio.move_on_after(self.auth_timeout_s):
            while True:
                message = await self._next_message(session)
                if message is None:
                    continue
                action = message.get("action")
                if action != "auth":
                    text = "not authorized" if action in ("subscribe", "unsubscribe") else None
                    await ws.send_text(_status("error", text or f"unknown action {action!r}"))
                    continue
                key = message.get("params")
                if not isinstance(key, str) or key not in self.api_keys:
                    self.counters["auth_failed"] += 1
                    await ws.send_text(_AUTH_FAILED)
                    await ws.close(1008, "authentication failed")
                    return False
                if key in self._by_key:
                    # One connection per key: the newcomer is refused, the
                    # established stream is left alone.
                    self.counters["max_connections"] += 1
                    await ws.send_text(_MAX_CONNECTIONS)
                    await ws.close(1008, "max connections")
                    return False
                # Registered with no await since the check: two racing
                # connections cannot both pass.
                session.key = key
                if self.faults.silent_until_resubscribed:
                    session.restored.update(self.faults.silent_streams)
                session.refresh(self.faults)
                session.cursor = self._log.base + len(self._log)
                if self.faults.away_steps and self.counters["connections"] > 1:
                    self._trade_on_while_away(session)
                self._by_key[key] = session
                self._streaming[session.serial] = session
                await ws.send_text(_AUTH_SUCCESS)
                return True
        self.counters["auth_timeout"] += 1
        await ws.send_text(_AUTH_TIMEOUT)
        await ws.close(1008, "auth timeout")
        return False

    async def _next_message(self, session: _Session) -> dict[str, Any] | None:
        """The next client JSON object; answers (and returns None for) anything else."""
        event = await session.ws.receive()
        if isinstance(event, TextReceived):
            raw: str | bytes = event.text
        elif isinstance(event, BytesReceived):
            raw = event.data
        else:
            return None  # pings are answered by the server layer
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            await session.ws.send_text(_status("error", "message is not valid JSON"))
            return None
        if not isinstance(message, dict):
            await session.ws.send_text(_status("error", "message must be a JSON object"))
            return None
        return message

    async def _receive_loop(self, session: _Session) -> None:
        try:
            while True:
                message = await self._next_message(session)
                if message is None:
                    continue
                action = message.get("action")
                params = message.get("params")
                if action in ("subscribe", "unsubscribe") and isinstance(params, str):
                    await self._change_subscription(session, action, params)
                elif action == "auth":
                    continue  # already authenticated; Polygon ignores a repeat
                else:
                    await session.ws.send_text(_status("error", f"invalid action {action!r}"))
        except WebSocketClosed as exc:
            if session.end_reason is None:
                session.end_reason = "client closed" if exc.by_peer else f"closed: {exc.reason}"
            return

    async def _age_limit(self, session: _Session, scope: trio.CancelScope) -> None:
        """The ``max_connection_age_s`` fault: end the connection at that age (1001)."""
        opened = trio.current_time()
        while True:
            limit = self.faults.max_connection_age_s
            now = trio.current_time()
            if limit is not None and now - opened >= limit:
                break
            await trio.sleep(0.05 if limit is None else min(0.05, opened + limit - now))
        session.end_reason = "Connection age limit"
        async with session.lock:  # not in the middle of a data frame
            try:
                await session.ws.close(1001, "Connection age limit")
            except WebSocketClosed:
                pass
        scope.cancel()

    async def _change_subscription(self, session: _Session, action: str, params: str) -> None:
        statuses = []
        async with session.lock:
            for raw in params.split(","):
                param = raw.strip()
                if not param:
                    continue
                ev, _, ticker = param.partition(".")
                if ev not in _EVENT_TYPES or not ticker:
                    statuses.append(_status("error", f"invalid subscription param: {param}"))
                    continue
                if action == "subscribe":
                    session.subs.add(param)
                    if self.faults.silent_until_resubscribed:
                        session.restored.add(param)
                    statuses.append(_status("success", f"subscribed to: {param}"))
                else:
                    session.subs.discard(param)
                    statuses.append(_status("success", f"unsubscribed to: {param}"))
            session.refresh(self.faults)
            if statuses:
                await session.ws.send_texts(statuses)

    def _lead_over_slowest(self, session: _Session) -> int:
        """How many log events ``session`` is ahead of the slowest connection that wants data."""
        wanted = self._ticker_set
        slowest = min(
            (s.cursor for s in self._streaming.values() if s.wants_any(wanted)),
            default=session.cursor,
        )
        return session.cursor - slowest

    def _frame_size(self, session: _Session) -> int:
        if self._frame_min == self._frame_max:
            return self._frame_min
        return session.frame_rng.randint(self._frame_min, self._frame_max)

    def _pull(self, session: _Session, count: int) -> tuple[list[str], list[WsEvent]]:
        """Up to ``count`` events for this session from its cursor, generating as needed:
        their texts and their :class:`WsEvent`.

        ``session.scanned`` grows by the log entries the cursor passed (the
        paced send loop paces on those: see ``_send_loop``)."""
        i = session.cursor
        log = self._log
        if i < log.base:
            session.lagging = True
            return [], []
        faults = self.faults
        if faults.skip_events and self._skip_seen < faults.skip_after_events + faults.skip_events:
            return self._pull_skipping(session, count)
        # Fast path: the log slice this frame can use, filtered by one C-level
        # pass over its keys.
        texts: list[str] = []
        events: list[WsEvent] = []
        wanted = session.wanted.__contains__
        scanned = 0
        while scanned < _SCAN_LIMIT:
            need = count - len(texts)
            j = i - log.base
            missing = j + need - len(log)
            if missing > 0:
                # In bulk, but no further ahead than this frame needs: events
                # are stamped when generated, and a paced stream's latency is
                # measured from that stamp. (A step may add bars: a few more.)
                self._generate(missing)
            chosen = list(map(wanted, log.keys[j : j + need]))
            texts += compress(log.texts[j : j + need], chosen)
            events += compress(log.events[j : j + need], chosen)
            i += need
            scanned += need
            if len(texts) == count:
                break
        session.scanned += i - session.cursor
        session.cursor = i
        return texts, events

    def _generate(self, steps: int) -> None:
        """Append the events of ``steps`` more steps of the market (or its replay) to the log."""
        if isinstance(self._events, ReplayMarket):
            self._events.play(self._log, steps)
        else:
            generated: list[WsEvent] = []
            self._events.run(generated, steps)
            self._log.add(generated)

    def _pull_skipping(self, session: _Session, count: int) -> tuple[list[str], list[WsEvent]]:
        """:meth:`_pull` while a ``skip_events`` window is open: event by event."""
        texts: list[str] = []
        events: list[WsEvent] = []
        log = self._log
        wanted = session.wanted
        faults = self.faults
        skip_lo = faults.skip_after_events
        skip_hi = skip_lo + faults.skip_events
        skip_ticker = faults.skip_symbol
        i = session.cursor
        scanned = 0
        while len(texts) < count and scanned < _SCAN_LIMIT:
            j = i - log.base
            if j >= len(log):
                self._generate(1)
                continue
            i += 1
            scanned += 1
            if log.keys[j] in wanted:
                event = log.events[j]
                if self._skip_seen < skip_hi and (
                    skip_ticker is None or skip_ticker == event.ticker
                ):
                    self._skip_seen += 1
                    if self._skip_seen > skip_lo:
                        self.counters["skipped_events"] += 1
                        self.truth.record_skipped((event,))
                        continue
                texts.append(log.texts[j])
                events.append(event)
        session.scanned += i - session.cursor
        session.cursor = i
        return texts, events

    def _trade_on_while_away(self, session: _Session) -> None:
        missed: list[WsEvent] = []
        self.stock_market.run(missed, self.faults.away_steps)
        self._log.add(missed)
        self.truth.record_skipped(missed)
        self.counters["away_events"] += len(missed)
        session.cursor = self._log.base + len(self._log)

    def _trim_log(self) -> None:
        log = self._log
        if len(log) < _TRIM_AT:
            return
        head = log.base + len(log)
        slowest = min((s.cursor for s in self._streaming.values()), default=head)
        cut = max(slowest, head - _MAX_BACKLOG)
        if cut - log.base > _TRIM_AT // 2:
            log.drop_before(cut)

    def _bad_element(self, event: WsEvent, kind: int) -> str:
        """An element that must become a dead letter, made from a real event."""
        if kind == 0:
            return (
                f'{{"ev":"T","sym":"{event.ticker}","i":"bad","x":4,"p":"abc","s":1,'
                f'"t":1,"q":1,"z":3}}'
            )
        if kind == 1:
            return '{"ev":"Q","bx":1,"bp":1.5,"bs":100,"ax":1,"ap":1.6,"as":100,"t":1,"q":1}'
        return f'{{"ev":"ZZ","sym":"{event.ticker}"}}'

    async def _send_loop(self, session: _Session, scope: trio.CancelScope) -> None:
        """Send the session's events; paced, its cursor moves through the shared
        log (the market's tape) at ``events_per_s`` entries per second.

        Pacing on the tape, not on the session's own events, keeps every
        connection at the same point of the market: an event is sent, as by
        the real service, about when it happened (its stamp), whichever
        connection's pull generated it. Paced on its own events, a connection
        whose tickers are a smaller share of the tape ran ahead, and the other
        one sent events stamped seconds earlier by that run (``mdagent bench
        --provider polygon --workers 2`` measured p99 9 s that way).
        """
        ws = session.ws
        rate = self.events_per_s
        pace_start = trio.current_time()
        paced_from = session.scanned
        try:
            while True:
                if not session.wants_any(self._ticker_set):
                    await session.changed.wait()
                    continue
                faults = self.faults
                if (
                    faults.stall_after_frames is not None
                    and not session.stalled
                    and session.frames >= faults.stall_after_frames
                ):
                    session.stalled = True
                    self.counters["stalls"] += 1
                    await trio.sleep(faults.stall_s)
                    pace_start, paced_from = trio.current_time(), session.scanned
                if trio.current_time() < self._stall_until:
                    await trio.sleep_until(self._stall_until)
                    pace_start, paced_from = trio.current_time(), session.scanned
                    continue
                if rate == 0 and self._lead_over_slowest(session) > _MAX_LEAD:
                    await trio.sleep(_LEAD_WAIT_S)
                    continue
                if rate > 0:
                    due = pace_start + (session.scanned - paced_from) / rate
                    now = trio.current_time()
                    if now - due > _MAX_PACE_LAG_S:
                        pace_start, paced_from = now, session.scanned
                    else:
                        await trio.sleep_until(due)
                async with session.lock:
                    if self.stalled():  # stalled while this task waited: nothing more goes
                        continue
                    self.writes_in_flight += 1
                    try:
                        sent = await self._send_batch(session, 1 if rate > 0 else _FRAMES_PER_WRITE)
                    finally:
                        self.writes_in_flight -= 1
                if session.lagging:
                    session.end_reason = "slow consumer"
                    self.counters["slow_consumer_disconnects"] += 1
                    await ws.close(1008, "slow consumer")
                    scope.cancel()
                    return
                every = faults.disconnect_every_frames
                if every and session.frames and session.frames % every == 0:
                    self.counters["fault_disconnects"] += 1
                    session.end_reason = "fault: disconnect"
                    if faults.disconnect_abort:
                        await ws.abort("fault: disconnect")
                    else:
                        await ws.close(1001, "fault: disconnect")
                    scope.cancel()
                    return
                if not sent:
                    await trio.lowlevel.checkpoint()  # a sparse subscription: let others run
        except WebSocketClosed:
            scope.cancel()

    async def _send_batch(self, session: _Session, max_frames: int) -> int:
        """Build and send up to ``max_frames`` data frames; returns the events sent."""
        faults = self.faults
        # Never run past a fault boundary inside one write.
        limit = max_frames
        every = faults.disconnect_every_frames
        if every is not None:
            limit = min(limit, every - session.frames % every)
        if faults.stall_after_frames is not None and not session.stalled:
            limit = min(limit, max(1, faults.stall_after_frames - session.frames))
        texts: list[str] = []
        batch: list[list[WsEvent]] = []
        injected: list[str] = []
        duplicates = garbage_frames = 0
        for _ in range(limit):
            body, events = self._pull(session, self._frame_size(session))
            if not events:
                break
            number = session.frames + len(batch) + 1
            if faults.malformed_every_frames and number % faults.malformed_every_frames == 0:
                kind = session.malformed_serial % 4
                session.malformed_serial += 1
                if kind == 3:
                    garbage = f'[{{"ev":"T","sym":"{events[0].ticker}","p":1'  # cut short
                    texts.append(garbage)
                    injected.append(garbage)
                    garbage_frames += 1
                else:
                    bad = self._bad_element(events[0], kind)
                    body.insert(len(body) // 2, bad)
                    injected.append(bad)
            frame = "[" + ",".join(body) + "]"
            texts.append(frame)
            if faults.duplicate_every_frames and number % faults.duplicate_every_frames == 0:
                texts.append(frame)
                duplicates += 1
            batch.append(events)
        if not texts:
            return 0
        # Recorded only once written: a write that fails (the client left) may
        # have delivered part of the batch, so ground truth errs on "not sent".
        await session.ws.send_texts(texts)
        sent = 0
        for events in batch:
            sent += len(events)
            if self.record_sent:
                self.truth.record_sent(events)
        self.truth.malformed += injected
        session.frames += len(batch)
        session.events += sent
        counters = self.counters
        counters["frames_sent"] += len(batch)
        counters["events_sent"] += sent
        counters["duplicate_frames"] += duplicates
        counters["garbage_frames"] += garbage_frames
        counters["malformed_elements"] += len(injected) - garbage_frames
        self._trim_log()
        return sent

    # -- REST --------------------------------------------------------------------------------

    def _request_id(self) -> str:
        return f"{self._request_rng.getrandbits(128):032x}"

    def _error(
        self, status: int, error: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> HttpResponse:
        self.counters[f"rest_{status}"] += 1
        body = {"status": "ERROR", "request_id": self._request_id(), "error": error}
        return json_response(status, body, headers)

    async def _handle_http(self, request: HttpRequest) -> HttpResponse:
        if request.method != "GET":
            return self._error(405, f"method {request.method} not allowed")
        path = request.path
        if path.startswith("/_fake/"):
            return self._fake_endpoint(request)
        self.counters["rest_requests"] += 1
        key = request.query.get("apiKey")
        auth = request.headers.get("authorization", "")
        if key is None and auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        if not key:
            return self._error(401, "API Key was not provided")
        if key not in self.api_keys:
            # The captured 401 body has no request_id [2.6].
            self.counters["rest_401"] += 1
            return json_response(401, {"status": "ERROR", "error": "Unknown API Key"})
        if self._take_forced_429():
            self.counters["rest_429s"] += 1
            retry = (("Retry-After", str(self.faults.rest_retry_after_s)),)
            return self._error(429, _MSG_429, retry)
        if self.free_tier:
            limited = self._free_tier_check(key)
            if limited is not None:
                return limited
        faults = self.faults
        if faults.rest_delay_s:
            await trio.sleep(faults.rest_delay_s)
        self.counters["rest_served"] += 1
        nth = self.counters["rest_served"]
        if faults.rest_500_every and nth % faults.rest_500_every == 0:
            return self._error(500, "Internal Server Error")
        response = self._route(request, path)
        if faults.rest_truncate_every and nth % faults.rest_truncate_every == 0:
            self.counters["rest_truncated"] += 1
            response = attrs.evolve(response, body=response.body[: len(response.body) // 2])
        return response

    def _route(self, request: HttpRequest, path: str) -> HttpResponse:
        try:
            parts = path.strip("/").split("/")
            kind = parts[1] if len(parts) > 1 else ""
            if kind in self.faults.rest_not_entitled:
                self.counters["rest_403"] += 1
                body = {
                    "status": "NOT_AUTHORIZED",
                    "request_id": self._request_id(),
                    "message": _MSG_NOT_ENTITLED,
                }
                return json_response(403, body)
            if parts == ["v3", "reference", "tickers"]:
                return self._reference_tickers(request)
            if len(parts) == 3 and parts[:2] == ["v3", "trades"]:
                return self._v3(request, parts[2], "trades")
            if len(parts) == 3 and parts[:2] == ["v3", "quotes"]:
                return self._v3(request, parts[2], "quotes")
            if len(parts) == 9 and parts[:3] == ["v2", "aggs", "ticker"] and parts[4] == "range":
                return self._aggs(request, parts[3], parts[5], parts[6], parts[7], parts[8])
        except _BadRequest as exc:
            return self._error(400, str(exc))
        self.counters["rest_404"] += 1
        body = {"status": "NOT_FOUND", "request_id": self._request_id(), "message": "Not found"}
        return json_response(404, body)

    def _reference_tickers(self, request: HttpRequest) -> HttpResponse:
        """``/v3/reference/tickers``: the streamed tickers (``faults.delisted`` ones
        inactive), filtered by ``ticker``, ``market``, ``active`` (default true),
        in ticker order, ``limit`` per page (at most ``reference_page_max``),
        then ``next_url`` with a cursor."""
        query = request.query
        cursor = query.get("cursor")
        if cursor is not None:
            try:
                state = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
                offset, limit = int(state["offset"]), int(state["n"])
                ticker, market, active = state["ticker"], state["market"], state["active"]
            except (binascii.Error, ValueError, KeyError, TypeError) as exc:
                raise _BadRequest("invalid cursor") from exc
        else:
            text = query.get("limit", str(_TICKERS_DEFAULT_LIMIT))
            if not text.isdigit() or not 1 <= int(text) <= _TICKERS_MAX_LIMIT:
                raise _BadRequest(f"invalid limit: {text!r} (1 to {_TICKERS_MAX_LIMIT})")
            active_text = query.get("active", "true")
            if active_text not in ("true", "false"):
                raise _BadRequest(f"invalid active: {active_text!r} (true or false)")
            offset, limit = 0, int(text)
            ticker, market = query.get("ticker"), query.get("market")
            active = active_text == "true"
        delisted = set(self.faults.delisted)
        chosen = [
            t
            for t in sorted(self.symbols)
            if (ticker is None or t == ticker)
            and market in (None, "stocks")
            and (t not in delisted) is active
        ]
        page = chosen[offset : offset + min(limit, self.reference_page_max)]
        results = [json.dumps(self._ticker_entry(t, t not in delisted)) for t in page]
        end = offset + len(page)
        state = None
        if end < len(chosen):
            state = {
                "offset": end, "n": limit, "ticker": ticker, "market": market, "active": active
            }  # fmt: skip
        return self._page(request, results, f'"count":{len(results)},', state)

    @staticmethod
    def _ticker_entry(ticker: str, active: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "ticker": ticker,
            "name": f"{ticker} Fake Holdings Inc.",
            "market": "stocks",
            "locale": "us",
            "primary_exchange": "XNAS",
            "type": "CS",
            "active": active,
            "currency_name": "usd",
            "last_updated_utc": "2026-11-30T00:00:00Z",
        }
        if not active:
            entry["delisted_utc"] = "2026-11-27T00:00:00Z"
        return entry

    def _free_tier_check(self, key: str) -> HttpResponse | None:
        now = trio.current_time()
        times = self._rest_times.setdefault(key, deque())
        while times and times[0] <= now - self.free_tier_window_s:
            times.popleft()
        if len(times) >= self.free_tier_limit:
            wait = max(1, math.ceil(times[0] + self.free_tier_window_s - now))
            self.counters["rest_429s"] += 1
            return self._error(429, _MSG_429, (("Retry-After", str(wait)),))
        times.append(now)
        return None

    def _market(self, ticker: str) -> TickerMarket | None:
        return self.stock_market.markets.get(ticker)

    def _page(
        self, request: HttpRequest, results: list[str], extra: str, state: dict[str, Any] | None
    ) -> HttpResponse:
        body = "{"
        if results:
            body += '"results":[' + ",".join(results) + "],"
        if state is not None:
            next_url = f"{self.rest_url}{request.path}?cursor={_encode_cursor(state)}"
            body += f'"next_url":{json.dumps(next_url)},'
        body += f'{extra}"status":"OK","request_id":"{self._request_id()}"}}'
        return HttpResponse(200, body.encode())

    def _v3(self, request: HttpRequest, ticker: str, kind: str) -> HttpResponse:
        query = request.query
        cursor = query.get("cursor")
        if cursor is not None:
            state = _decode_cursor(cursor, kind, ticker)
        else:
            state = self._v3_state(query, kind, ticker)
        market = self._market(ticker)
        if market is None:
            return self._page(request, [], "", None)
        if kind == "trades":
            items: Sequence[StockTrade | StockQuote] = market.trades
            keys = market.trade_keys
        else:
            items, keys = market.quotes, market.quote_keys
        lo_ns, hi_ns = state["lo"], state["hi"]
        limit = min(state["n"], self.rest_page_max)
        lo = 0 if lo_ns is None else bisect_left(keys, (lo_ns, -1))
        hi = len(keys) if hi_ns is None else bisect_left(keys, (hi_ns, -1))
        after = state.get("a")
        asc = state["o"] == "asc"
        if after is not None:
            position = (after[0], after[1])
            if asc:
                lo = max(lo, bisect_right(keys, position))
            else:
                hi = min(hi, bisect_left(keys, position))
        if asc:
            page = items[lo : min(hi, lo + limit)]
            more = lo + limit < hi
        else:
            page = items[max(lo, hi - limit) : hi][::-1]
            more = hi - limit > lo
        encode = _trade_json if kind == "trades" else _quote_json
        results = [encode(item) for item in page]  # type: ignore[arg-type]
        next_state = None
        if more and page:
            last = page[-1]
            next_state = {**state, "a": [last.sip_ns, last.seq]}
        return self._page(request, results, "", next_state)

    def _v3_state(self, query: Any, kind: str, ticker: str) -> dict[str, Any]:
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise _BadRequest(f"invalid order: {order!r} (asc or desc)")
        sort = query.get("sort", "timestamp")
        if sort != "timestamp":
            raise _BadRequest(f"invalid sort: {sort!r} (timestamp)")
        limit = _parse_limit(query, 1000)
        lo: int | None = None
        hi: int | None = None

        def narrow(new_lo: int | None, new_hi: int | None) -> None:
            nonlocal lo, hi
            if new_lo is not None:
                lo = new_lo if lo is None else max(lo, new_lo)
            if new_hi is not None:
                hi = new_hi if hi is None else min(hi, new_hi)

        # A date bound has day granularity: lte/gt a date include/exclude that whole day.
        for name in ("timestamp", "timestamp.gte", "timestamp.gt", "timestamp.lte", "timestamp.lt"):
            text = query.get(name)
            if text is None:
                continue
            value, is_date = _parse_ns_or_date(name, text)
            span = _NS_PER_DAY if is_date else 1
            if name == "timestamp":
                narrow(value, value + span)
            elif name == "timestamp.gte":
                narrow(value, None)
            elif name == "timestamp.gt":
                narrow(value + span, None)
            elif name == "timestamp.lte":
                narrow(None, value + span)
            else:
                narrow(None, value)
        return {"k": kind, "t": ticker, "lo": lo, "hi": hi, "o": order, "n": limit}

    def _aggs(
        self, request: HttpRequest, ticker: str, mult: str, span: str, start: str, end: str
    ) -> HttpResponse:
        query = request.query
        cursor = query.get("cursor")
        if cursor is not None:
            state = _decode_cursor(cursor, "aggs", ticker)
        else:
            state = self._aggs_state(query, ticker, mult, span, start, end)
        length, lo_ms, hi_ms = state["len"], state["lo"], state["hi"]
        asc = state["o"] == "asc"
        after = state.get("a")
        if after is not None:
            if asc:
                lo_ms = max(lo_ms, after + length)
            else:
                hi_ms = min(hi_ms, after)
        market = self._market(ticker)
        bars: list[AggBar] = []
        if market is not None and lo_ms < hi_ms:
            bars = aggregate(market.trades_in(lo_ms * NS_PER_MS, hi_ms * NS_PER_MS), length)
        if not asc:
            bars.reverse()
        limit = state["n"]
        page, more = bars[:limit], len(bars) > limit
        next_state = {**state, "a": page[-1].start_ms} if more else None
        adjusted = "true" if state["adj"] else "false"
        extra = (
            f'"ticker":"{ticker}","queryCount":{len(page)},"resultsCount":{len(page)},'
            f'"adjusted":{adjusted},'
        )
        return self._page(request, [_agg_json(b) for b in page], extra, next_state)

    def _aggs_state(
        self, query: Any, ticker: str, mult: str, span: str, start: str, end: str
    ) -> dict[str, Any]:
        if not mult.isdigit() or int(mult) < 1:
            raise _BadRequest(f"invalid multiplier: {mult!r}")
        if span not in _AGG_SPANS_MS:
            raise _BadRequest(
                f"invalid timespan: {span!r} (this fake serves {', '.join(_AGG_SPANS_MS)})"
            )
        length = int(mult) * _AGG_SPANS_MS[span]
        order = query.get("sort", "asc")
        if order not in ("asc", "desc"):
            raise _BadRequest(f"invalid sort: {order!r} (asc or desc)")
        adjusted = query.get("adjusted", "true")
        if adjusted not in ("true", "false"):
            raise _BadRequest(f"invalid adjusted: {adjusted!r} (true or false)")
        limit = _parse_limit(query, 5000)

        def ms(name: str, text: str) -> tuple[int, bool]:
            day = _parse_date_ns(text)
            if day is not None:
                return day // NS_PER_MS, True
            if text.isdigit():
                return int(text), False
            raise _BadRequest(f"invalid {name}: {text!r} is neither a ms timestamp nor YYYY-MM-DD")

        from_ms, _ = ms("from", start)
        to_ms, to_is_date = ms("to", end)
        # Bars whose window starts within [from, to]; a date "to" covers its whole day.
        last_start = to_ms + _MS_PER_DAY - 1 if to_is_date else to_ms
        lo = -(-from_ms // length) * length
        hi = last_start - last_start % length + length
        return {
            "k": "aggs",
            "t": ticker,
            "len": length,
            "lo": lo,
            "hi": hi,
            "o": order,
            "n": limit,
            "adj": adjusted == "true",
        }

    def _fake_endpoint(self, request: HttpRequest) -> HttpResponse:
        if request.path == "/_fake/stats":
            return json_response(200, self.stats())
        if request.path != "/_fake/sent":
            return json_response(404, {"status": "NOT_FOUND", "message": "unknown fake endpoint"})
        ticker = request.query.get("ticker", "")
        ev = request.query.get("ev", "T")
        skipped = request.query.get("skipped", "false") in ("1", "true")
        if ev not in _EVENT_TYPES or not ticker:
            return json_response(400, {"status": "ERROR", "error": "need ticker= and ev=T|Q|AM|A"})
        items = self.truth.events(ticker, ev, skipped=skipped)
        body = {
            "ticker": ticker,
            "ev": ev,
            "skipped": skipped,
            "count": len(items),
            "malformed": len(self.truth.malformed),
            "events": [_snapshot(item) for item in items],
        }
        return json_response(200, body)
