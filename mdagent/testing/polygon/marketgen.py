"""Deterministic, seeded US-stock market data for the fake Polygon/Massive venue (sans-IO).

A :class:`StockMarket` is the whole venue's tape: every :meth:`StockMarket.step`
picks a ticker and produces one trade or NBBO quote for it, plus the second
(``A``) and minute (``AM``) bars that closed by then. Every event comes out
already encoded as the JSON text of one WebSocket frame element, so a server
only joins texts; the structured value travels beside the text for ground truth
and REST.

Determinism: the *content* (which ticker, prices, sizes, ids, sequence
numbers, exchanges, conditions) depends only on ``(seed, ticker)``; timestamps
come from the clock, because consumers measure latency from them. With a
:class:`SteppingClock` everything is reproducible.

Exactness: prices are integers in units of 1e-4 dollars and sizes integers in
units of 1e-6 shares, formatted with integer arithmetic. A float never touches
a price, so the JSON number text is exact by construction and the REST page
prints the very same text as the stream.

Late trades: a small share of trades is reported late, with a SIP timestamp
up to 90 s in the past (as out-of-sequence and late TRF reports are). Such a
trade lands in a bar that was already sent, so that bar is sent again with the
corrected values, which is what Polygon does [wire-formats 2.4]. Sequence
numbers still increase in arrival order; REST orders by SIP timestamp.
"""

from __future__ import annotations

import heapq
import random
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate
from typing import Final, NamedTuple, cast

import msgspec

from mdagent.providers.polygon.sansio import trade_id
from mdagent.providers.polygon.sessions import session_bounds_ns

__all__ = [
    "NS_PER_MS",
    "PRICE_SCALE",
    "SIZE_SCALE",
    "AggBar",
    "SteppingClock",
    "StockBar",
    "StockMarket",
    "StockQuote",
    "StockTrade",
    "TickerMarket",
    "WsEvent",
    "aggregate",
    "encode_bar",
    "encode_quote",
    "encode_trade",
    "format_price",
    "format_size",
]

PRICE_SCALE: Final = 10_000
"""Prices are integers in units of 1/PRICE_SCALE dollars (Polygon prints up to 4 decimals)."""
SIZE_SCALE: Final = 1_000_000
"""Sizes are integers in units of 1/SIZE_SCALE shares (fractional trades exist since 2026-02)."""
NS_PER_MS: Final = 1_000_000

# Polygon stock exchange ids (/v3/reference/exchanges) of lit venues, with a
# rough share of volume; 4 is FINRA ADF, whose prints carry a TRF id.
_LIT_EXCHANGES: Final = (12, 11, 10, 8, 19, 15, 21, 7, 18, 2, 17, 1, 3, 9, 20)
_LIT_CUM_WEIGHTS: Final = tuple(accumulate((20, 12, 10, 9, 9, 6, 6, 5, 5, 4, 3, 3, 3, 3, 2)))
# 64 slots drawn in proportion to the weights: one index per pick, no bisect.
_LIT_TABLE: Final = tuple(
    _LIT_EXCHANGES[bisect_left(_LIT_CUM_WEIGHTS, (k + 0.5) * _LIT_CUM_WEIGHTS[-1] / 64)]
    for k in range(64)
)
_TRF_EXCHANGE: Final = 4
_TRF_IDS: Final = (201, 202, 203)  # FINRA Nasdaq TRF Carteret / Chicago, FINRA NYSE TRF
_ODD_LOT: Final = 37
_CONDITION_SETS: Final = ((14, 41), (12,), (41,), (14,), (12, 41), (53,))
_QUOTE_CONDITIONS: Final = (1, 2, 8, 9)
_QUOTE_INDICATORS: Final = ((604,), (1,), (4,), (603, 604))

_KNOWN_PRICES: Final = {
    "AAPL": 190,
    "MSFT": 420,
    "NVDA": 900,
    "TSLA": 250,
    "AMZN": 180,
    "GOOGL": 170,
    "META": 480,
    "SPY": 520,
    "QQQ": 440,
    "IBM": 190,
}
_TAPE_A: Final = frozenset(("IBM", "GE", "JPM", "KO", "BA", "XOM", "T", "F", "BAC", "WMT"))
_TAPE_B: Final = frozenset(("SPY", "IWM", "GLD", "DIA", "XLF", "EEM", "TLT"))

# Late trades: share of trades, and how far back (ns). Mostly a few seconds
# (second bars get corrected); sometimes up to 90 s (minute bars too).
_LATE_SHORT_NS: Final = (1_000_000_000, 3_000_000_000)
_LATE_LONG_NS: Final = (3_000_000_000, 90_000_000_000)
# Bars kept per ticker and span for corrections; late trades reach back 90 s at most.
_KEPT_BARS: Final = 2_000


def format_price(units: int) -> str:
    """``1141250`` -> ``"114.125"``: the exact JSON number text, never via float."""
    whole, frac = divmod(units, PRICE_SCALE)
    if not frac:
        return str(whole)
    return f"{whole}.{frac:04d}".rstrip("0")


def format_size(units: int) -> str:
    """``100_000_000`` -> ``"100"``, ``1_500_000`` -> ``"1.5"``."""
    whole, frac = divmod(units, SIZE_SCALE)
    if not frac:
        return str(whole)
    return f"{whole}.{frac:06d}".rstrip("0")


def _vwap(notional: int, volume: int) -> int:
    """VWAP in price units, rounded half up (integer arithmetic, same on every path)."""
    return (2 * notional + volume) // (2 * volume)


class SteppingClock:
    """A deterministic clock: every call returns ``step_ns`` more than the last one."""

    def __init__(self, start_ns: int = 1_700_000_000_123_456_789, step_ns: int = 7_654_321) -> None:
        self._next = start_ns
        self._step = step_ns

    def __call__(self) -> int:
        now = self._next
        self._next += self._step
        return now


# Trades and quotes live in the per-ticker history (up to max_history each),
# so they are Structs that the cyclic GC never tracks: a NamedTuple stays
# tracked for life, and full collections walking millions of them cost a
# venue streaming at full speed a third of its time. They hold only strings,
# ints and int tuples, so they cannot be part of a reference cycle.


class StockTrade(msgspec.Struct, frozen=True, gc=False):
    ticker: str
    seq: int
    sip_ns: int
    participant_ns: int
    exchange: int
    trf_id: int | None
    trf_ns: int | None
    id: str
    price: int
    price_text: str
    size: int  # SIZE_SCALE units
    size_text: str
    conditions: tuple[int, ...] | None
    tape: int
    late: bool

    @property
    def t_ms(self) -> int:
        return self.sip_ns // NS_PER_MS

    @property
    def natural_id(self) -> str:
        """The parser's natural trade id (same on the stream and over REST)."""
        return trade_id(self.exchange, self.trf_id, self.id)

    @property
    def fractional(self) -> bool:
        return self.size % SIZE_SCALE != 0


class StockQuote(msgspec.Struct, frozen=True, gc=False):
    ticker: str
    seq: int
    sip_ns: int
    participant_ns: int
    bid_exchange: int
    bid_price: int
    bid_text: str
    bid_size: int  # shares (since 2025-11-03, no longer round lots)
    ask_exchange: int
    ask_price: int
    ask_text: str
    ask_size: int
    condition: int | None
    indicators: tuple[int, ...] | None
    tape: int

    @property
    def t_ms(self) -> int:
        return self.sip_ns // NS_PER_MS


class AggBar(NamedTuple):
    """A bar as computed from trades: the REST aggregate, and the body of a stream bar."""

    start_ms: int
    end_ms: int
    open: str
    high: str
    low: str
    close: str
    volume: int  # SIZE_SCALE units
    vwap: str
    n: int

    @property
    def volume_text(self) -> str:
        return format_size(self.volume)


class StockBar(NamedTuple):
    """One sent version of a stream bar (``AM`` or ``A``); ``version`` 1 is the first send."""

    ticker: str
    ev: str
    version: int
    bar: AggBar
    day_volume: int  # SIZE_SCALE units
    day_open: str
    day_vwap: str

    @property
    def start_ms(self) -> int:
        return self.bar.start_ms


class WsEvent(NamedTuple):
    """One stream event: its JSON object text plus the value it encodes."""

    ev: str
    ticker: str
    text: str
    item: StockTrade | StockQuote | StockBar


class _BarAcc:
    """A bar accumulating trades in any arrival order (open/close by (sip_ns, seq))."""

    __slots__ = (
        "c",
        "c_key",
        "end_ms",
        "h",
        "l",
        "n",
        "notional",
        "o",
        "o_key",
        "queued",
        "start_ms",
        "version",
        "volume",
    )

    def __init__(self, start_ms: int, end_ms: int) -> None:
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.o_key = self.c_key = (0, 0)
        self.o = self.c = self.h = self.l = 0
        self.n = self.volume = self.notional = 0
        self.version = 0
        self.queued = False

    def add(self, trade: StockTrade) -> None:
        key = (trade.sip_ns, trade.seq)
        price = trade.price
        if self.n == 0:
            self.o_key = self.c_key = key
            self.o = self.c = self.h = self.l = price
        else:
            if key < self.o_key:
                self.o_key, self.o = key, price
            if key > self.c_key:
                self.c_key, self.c = key, price
            if price > self.h:
                self.h = price
            if price < self.l:
                self.l = price
        self.n += 1
        self.volume += trade.size
        self.notional += price * trade.size

    def freeze(self) -> AggBar:
        return AggBar(
            self.start_ms,
            self.end_ms,
            format_price(self.o),
            format_price(self.h),
            format_price(self.l),
            format_price(self.c),
            self.volume,
            format_price(_vwap(self.notional, self.volume)),
            self.n,
        )


def aggregate(trades: Iterable[StockTrade], length_ms: int) -> list[AggBar]:
    """Bars of ``length_ms`` (epoch-aligned) from trades sorted by SIP time; no empty bars."""
    bars: list[AggBar] = []
    acc: _BarAcc | None = None
    for trade in trades:
        t_ms = trade.sip_ns // NS_PER_MS
        if acc is None or t_ms >= acc.end_ms:
            if acc is not None:
                bars.append(acc.freeze())
            start = t_ms - t_ms % length_ms
            acc = _BarAcc(start, start + length_ms)
        acc.add(trade)
    if acc is not None:
        bars.append(acc.freeze())
    return bars


def _conditions_json(conditions: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, conditions)) + "]"


# Hot path (every generated event): WsEvents are built with tuple.__new__
# directly, skipping the Python-level __new__ a namedtuple class has, and the
# optional JSON members that come from small fixed sets are spelled once.
_new = tuple.__new__
_QUOTE_CONDITION_JSON: Final = tuple(f',"c":{c}' for c in _QUOTE_CONDITIONS)
_QUOTE_INDICATOR_JSON: Final = tuple(f',"i":{_conditions_json(i)}' for i in _QUOTE_INDICATORS)
_trade_conditions_json: dict[tuple[int, ...] | None, str] = {None: ""}


def _trade_conditions(conditions: tuple[int, ...] | None) -> str:
    text = _trade_conditions_json.get(conditions)
    if text is None:
        text = _trade_conditions_json[conditions] = f',"c":{_conditions_json(conditions or ())}'
    return text


class TickerMarket:
    """One ticker: its generator state and its bounded, SIP-time-sorted history."""

    def __init__(
        self,
        ticker: str,
        seed: int,
        *,
        max_history: int,
        late_ratio: float,
        fractional_ratio: float,
        trf_ratio: float,
    ) -> None:
        self.ticker = ticker
        self.max_history = max_history
        self._late_ratio = late_ratio
        self._fractional_ratio = fractional_ratio
        self._trf_ratio = trf_ratio
        spec_rng = random.Random(f"mdagent-polygon-spec:{seed}:{ticker}")
        self._rng = random.Random(f"mdagent-polygon:{seed}:{ticker}")
        if ticker in _TAPE_A:
            self.tape = 1
        elif ticker in _TAPE_B:
            self.tape = 2
        else:
            self.tape = 3
        dollars = _KNOWN_PRICES.get(ticker) or spec_rng.choice((0.4372, 3, 12, 45, 130, 260))
        # A sub-dollar stock quotes in 1/100 cent; everything else in cents (Reg NMS 612).
        self.quote_tick = 1 if dollars < 1 else PRICE_SCALE // 100
        start = round(dollars * PRICE_SCALE)  # the only float: a seed constant, not a price
        self.bid = start - start % self.quote_tick
        self.ask = self.bid + self.quote_tick
        self.activity = spec_rng.choice((1, 2, 3, 5))
        self._seq = spec_rng.randrange(1_000, 5_000_000)
        self._trade_ids: dict[tuple[int, int | None], int] = {}
        self._price_texts: dict[int, str] = {}
        self._last_ns = 0
        self._day_start_ns = self._day_end_ns = -1
        self._day_volume = 0
        self._day_notional = 0
        self._day_open = 0
        self.bars: dict[str, dict[int, _BarAcc]] = {"A": {}, "AM": {}}
        self.trades: list[StockTrade] = []
        self.quotes: list[StockQuote] = []
        # Parallel sort keys (sip_ns, seq): bisect on plain tuples, no key function.
        self.trade_keys: list[tuple[int, int]] = []
        self.quote_keys: list[tuple[int, int]] = []
        # History is trimmed in chunks: once it is this long, back to max_history.
        self._trim_at = max_history + max(1_000, max_history // 8)
        self._quote_head = f'{{"ev":"Q","sym":"{ticker}","bx":'
        self._trade_head = f'{{"ev":"T","sym":"{ticker}","i":"'
        self._tail = f',"z":{self.tape}}}'

    # -- generation --------------------------------------------------------------------------

    def _price_text(self, units: int) -> str:
        # Prices walk a few ticks around the book, so the same texts recur:
        # a small cache saves a third of the encoding work.
        text = self._price_texts.get(units)
        if text is None:
            if len(self._price_texts) > 4096:
                self._price_texts.clear()
            text = self._price_texts[units] = format_price(units)
        return text

    def _next_seq(self) -> int:
        # Increasing, unique per ticker, never contiguous for long.
        self._seq += 1 + int(self._rng.random() * 12)
        return self._seq

    def _advance(self, now_ns: int) -> int:
        sip = max(now_ns, self._last_ns + 1)
        self._last_ns = sip
        if not self._day_start_ns <= sip < self._day_end_ns:
            self._new_day(sip)
        return sip

    def _new_day(self, sip_ns: int) -> None:
        # Sequence numbers and day statistics restart every trading session,
        # which follows the New York date (providers/polygon/sessions.py).
        self._day_start_ns, self._day_end_ns = session_bounds_ns(sip_ns)
        self._seq = 1 + int(self._rng.random() * 1000)
        self._day_volume = self._day_notional = self._day_open = 0

    def _move_book(self) -> None:
        r = self._rng.random()
        tick = self.quote_tick
        if r < 0.2 and self.bid > tick:
            self.bid -= tick
        elif r < 0.4:
            self.bid += tick
        spread_ticks = 1 + int(self._rng.random() * self._rng.random() * 4)
        self.ask = self.bid + spread_ticks * tick

    def quote(self, now_ns: int) -> StockQuote:
        return self.quote_event(now_ns).item  # type: ignore[return-value]

    def trade(self, now_ns: int) -> StockTrade:
        return self.trade_event(now_ns).item  # type: ignore[return-value]

    # The two event makers below are the generator's hot path: the steps of
    # _move_book, _advance, _next_seq, _price_text, _remember and the encoders
    # are spelled out inline, drawing from the RNG in exactly their order (the
    # content for a seed is unchanged). Keep them in step with those helpers.

    def quote_event(self, now_ns: int) -> WsEvent:
        """One NBBO quote, remembered and encoded (see :func:`encode_quote`)."""
        r = self._rng.random
        tick = self.quote_tick
        x = r()
        bid = self.bid
        if x < 0.2 and bid > tick:
            bid -= tick
        elif x < 0.4:
            bid += tick
        ask = bid + (1 + int(r() * r() * 4)) * tick
        self.bid = bid
        self.ask = ask
        last = self._last_ns
        sip = self._last_ns = now_ns if now_ns > last else last + 1
        if not self._day_start_ns <= sip < self._day_end_ns:
            self._new_day(sip)
        bx = _LIT_TABLE[int(r() * 64)]
        ax = _LIT_TABLE[int(r() * 64)]
        bid_size = 100 * (1 + int(r() * 30)) if r() < 0.8 else 1 + int(r() * 99)
        ask_size = 100 * (1 + int(r() * 30)) if r() < 0.8 else 1 + int(r() * 99)
        c_index = int(r() * len(_QUOTE_CONDITIONS)) if r() < 0.3 else -1
        i_index = int(r() * len(_QUOTE_INDICATORS)) if r() < 0.2 else -1
        seq = self._seq = self._seq + 1 + int(r() * 12)
        texts = self._price_texts
        bid_text = texts.get(bid) or self._price_text(bid)
        ask_text = texts.get(ask) or self._price_text(ask)
        ticker = self.ticker
        quote = StockQuote(
            ticker,
            seq,
            sip,
            sip - 1_000 - int(r() * 300_000),
            bx,
            bid,
            bid_text,
            bid_size,
            ax,
            ask,
            ask_text,
            ask_size,
            None if c_index < 0 else _QUOTE_CONDITIONS[c_index],
            None if i_index < 0 else _QUOTE_INDICATORS[i_index],
            self.tape,
        )
        keys = self.quote_keys
        key = (sip, seq)
        if not keys or key > keys[-1]:
            keys.append(key)
            self.quotes.append(quote)
        else:
            self._remember(self.quotes, keys, quote)
        if len(keys) > self._trim_at:
            self._trim(self.quotes, keys)
        text = (
            f'{self._quote_head}{bx},"bp":{bid_text},"bs":{bid_size},"ax":{ax},"ap":{ask_text},'
            f'"as":{ask_size}{"" if c_index < 0 else _QUOTE_CONDITION_JSON[c_index]}'
            f"{'' if i_index < 0 else _QUOTE_INDICATOR_JSON[i_index]}"
            f',"t":{sip // NS_PER_MS},"q":{seq}{self._tail}'
        )
        return _new(WsEvent, ("Q", ticker, text, quote))

    def trade_event(self, now_ns: int) -> WsEvent:
        """One trade, remembered, counted into the day, and encoded (see :func:`encode_trade`)."""
        r = self._rng.random
        if r() < 0.3:
            self._move_book()
        last = self._last_ns
        live_sip = self._last_ns = now_ns if now_ns > last else last + 1
        if not self._day_start_ns <= live_sip < self._day_end_ns:
            self._new_day(live_sip)
        late = r() < self._late_ratio
        sip = live_sip
        if late:
            lo, hi = _LATE_SHORT_NS if r() < 0.7 else _LATE_LONG_NS
            sip = max(1, live_sip - lo - int(r() * (hi - lo)))
        on_trf = r() < self._trf_ratio
        bid = self.bid
        ask = self.ask
        if on_trf:
            exchange: int = _TRF_EXCHANGE
            trf_id: int | None = _TRF_IDS[int(r() * len(_TRF_IDS))]
            reported_ns = sip - 200 - int(r() * 150_000)
            trf_ns: int | None = reported_ns
            participant = reported_ns - 100 - int(r() * 500_000)
            mode = r()
            if mode < 0.3:
                price = (bid + ask) // 2  # midpoint: half a cent is 4 decimals
            elif mode < 0.45:
                price = bid + 1 + int(r() * (ask - bid - 1 or 1))  # sub-penny
            else:
                price = bid if mode < 0.7 else ask
        else:
            exchange = _LIT_TABLE[int(r() * 64)]
            trf_id = trf_ns = None
            participant = sip - 1_000 - int(r() * 400_000)
            price = bid if r() < 0.5 else ask
        if price < 1:
            price = 1
        kind = r()
        if on_trf and kind < self._fractional_ratio / max(self._trf_ratio, 1e-9):
            size = 1 + int(r() * 20 * SIZE_SCALE)  # fractional shares come through a TRF
            if size % SIZE_SCALE == 0:
                size += SIZE_SCALE // 2
        elif kind < 0.35:
            size = (1 + int(r() * 99)) * SIZE_SCALE  # odd lot
        elif kind < 0.9:
            size = 100 * (1 + int(r() * 10)) * SIZE_SCALE
        else:
            size = (100 + int(r() * 4900)) * SIZE_SCALE
        conditions: tuple[int, ...] | None = None
        if r() < 0.5:
            conditions = _CONDITION_SETS[int(r() * len(_CONDITION_SETS))]
        if size < 100 * SIZE_SCALE:
            conditions = tuple(sorted({*(conditions or ()), _ODD_LOT}))
        id_key = (exchange, trf_id)
        # Each (exchange, TRF) numbers its own prints from a small base, so ids
        # collide across venues: exactly why the natural key includes both.
        next_id = self._trade_ids.get(id_key)
        if next_id is None:
            next_id = 1 + int(r() * 300)
        self._trade_ids[id_key] = next_id + 1 + int(r() * 3)
        seq = self._seq = self._seq + 1 + int(r() * 12)
        price_text = self._price_texts.get(price) or self._price_text(price)
        whole, frac = divmod(size, SIZE_SCALE)
        size_text = format_size(size) if frac else str(whole)
        ticker = self.ticker
        trade = StockTrade(
            ticker,
            seq,
            sip,
            participant,
            exchange,
            trf_id,
            trf_ns,
            str(next_id),
            price,
            price_text,
            size,
            size_text,
            conditions,
            self.tape,
            late,
        )
        keys = self.trade_keys
        key = (sip, seq)
        if not keys or key > keys[-1]:
            keys.append(key)
            self.trades.append(trade)
        else:
            self._remember(self.trades, keys, trade)
        if len(keys) > self._trim_at:
            self._trim(self.trades, keys)
        if not self._day_open:
            self._day_open = price
        self._day_volume += size
        self._day_notional += price * size
        text = (
            f'{self._trade_head}{next_id}","x":{exchange},"p":{price_text},"s":{whole}'
            f"{_trade_conditions_json.get(conditions) or _trade_conditions(conditions)}"
            f',"t":{sip // NS_PER_MS},"q":{seq}{self._tail}'
        )
        if trf_ns is not None:
            text = f'{text[:-1]},"trfi":{trf_id},"trft":{trf_ns // NS_PER_MS}}}'
        if frac:
            text = f'{text[:-1]},"ds":"{size_text}"}}'
        return _new(WsEvent, ("T", ticker, text, trade))

    def _remember(
        self,
        items: list[StockTrade] | list[StockQuote],
        keys: list[tuple[int, int]],
        item: StockTrade | StockQuote,
    ) -> None:
        key = (item.sip_ns, item.seq)
        if not keys or key > keys[-1]:
            keys.append(key)
            items.append(item)  # type: ignore[arg-type]
        else:
            # A late trade: insert in SIP order (close to the end, so cheap).
            index = bisect_left(keys, key)
            keys.insert(index, key)
            items.insert(index, item)  # type: ignore[arg-type]
        if len(items) > self._trim_at:
            self._trim(items, keys)

    def _trim(
        self, items: list[StockTrade] | list[StockQuote], keys: list[tuple[int, int]]
    ) -> None:
        excess = len(items) - self.max_history
        del items[:excess]
        del keys[:excess]

    def bar_acc(self, ev: str, start_ms: int, length_ms: int) -> _BarAcc:
        bars = self.bars[ev]
        acc = bars.get(start_ms)
        if acc is None:
            acc = bars[start_ms] = _BarAcc(start_ms, start_ms + length_ms)
            if len(bars) > _KEPT_BARS + _KEPT_BARS // 4:
                for old in sorted(bars)[: len(bars) - _KEPT_BARS]:
                    del bars[old]
        return acc

    def bar_version(self, ev: str, acc: _BarAcc) -> StockBar:
        acc.version += 1
        volume = self._day_volume or acc.volume
        day_vwap = _vwap(self._day_notional, self._day_volume) if self._day_volume else acc.c
        return StockBar(
            self.ticker,
            ev,
            acc.version,
            acc.freeze(),
            volume,
            format_price(self._day_open or acc.o),
            format_price(day_vwap),
        )

    # -- history queries ---------------------------------------------------------------------

    def trades_in(self, lo_ns: int | None, hi_ns: int | None) -> Sequence[StockTrade]:
        """Trades with ``lo_ns <= sip_ns < hi_ns``, in SIP order."""
        lo = 0 if lo_ns is None else bisect_left(self.trade_keys, (lo_ns, -1))
        hi = len(self.trades) if hi_ns is None else bisect_left(self.trade_keys, (hi_ns, -1))
        return self.trades[lo:hi]


# -- encoding --------------------------------------------------------------------------------


def encode_trade(t: StockTrade) -> str:
    parts = [
        f'{{"ev":"T","sym":"{t.ticker}","i":"{t.id}","x":{t.exchange},"p":{t.price_text},'
        f'"s":{t.size // SIZE_SCALE}'
    ]
    if t.conditions:
        parts.append(f',"c":{_conditions_json(t.conditions)}')
    parts.append(f',"t":{t.sip_ns // NS_PER_MS},"q":{t.seq},"z":{t.tape}')
    if t.trf_id is not None and t.trf_ns is not None:
        parts.append(f',"trfi":{t.trf_id},"trft":{t.trf_ns // NS_PER_MS}')
    if t.size % SIZE_SCALE:
        parts.append(f',"ds":"{t.size_text}"')
    parts.append("}")
    return "".join(parts)


def encode_quote(q: StockQuote) -> str:
    text = (
        f'{{"ev":"Q","sym":"{q.ticker}","bx":{q.bid_exchange},"bp":{q.bid_text},'
        f'"bs":{q.bid_size},"ax":{q.ask_exchange},"ap":{q.ask_text},"as":{q.ask_size}'
    )
    if q.condition is not None:
        text += f',"c":{q.condition}'
    if q.indicators is not None:
        text += f',"i":{_conditions_json(q.indicators)}'
    return text + f',"t":{q.sip_ns // NS_PER_MS},"q":{q.seq},"z":{q.tape}}}'


def encode_bar(b: StockBar) -> str:
    bar = b.bar
    avg_size = bar.volume // bar.n // SIZE_SCALE
    text = (
        f'{{"ev":"{b.ev}","sym":"{b.ticker}","v":{bar.volume // SIZE_SCALE},'
        f'"av":{b.day_volume // SIZE_SCALE},"op":{b.day_open},"vw":{bar.vwap},'
        f'"o":{bar.open},"c":{bar.close},"h":{bar.high},"l":{bar.low},"a":{b.day_vwap},'
        f'"z":{avg_size},"s":{bar.start_ms},"e":{bar.end_ms}'
    )
    # dv/dav (2026-03): the exact volumes as strings, only when fractional.
    if bar.volume % SIZE_SCALE or b.day_volume % SIZE_SCALE:
        text += f',"dv":"{format_size(bar.volume)}","dav":"{format_size(b.day_volume)}"'
    return text + "}"


# -- the venue's tape ------------------------------------------------------------------------


_BAR_SPANS: Final = (("A", 1_000), ("AM", 60_000))


class StockMarket:
    """Every ticker of the venue, stepped one event at a time (see module docstring)."""

    def __init__(
        self,
        tickers: Sequence[str],
        seed: int,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        max_history: int = 1_000_000,
        trade_ratio: float = 0.35,
        late_ratio: float = 0.02,
        fractional_ratio: float = 0.02,
        trf_ratio: float = 0.3,
    ) -> None:
        if not tickers:
            raise ValueError("need at least one ticker")
        if len(set(tickers)) != len(tickers):
            raise ValueError(f"duplicate tickers in {list(tickers)}")
        if max_history < 1:
            raise ValueError("max_history must be >= 1")
        self.tickers = tuple(tickers)
        self._clock = clock_ns
        self._trade_ratio = trade_ratio
        self._pick = random.Random(f"mdagent-polygon-tape:{seed}")
        self.markets = {
            t: TickerMarket(
                t,
                seed,
                max_history=max_history,
                late_ratio=late_ratio,
                fractional_ratio=fractional_ratio,
                trf_ratio=trf_ratio,
            )
            for t in self.tickers
        }
        self._ordered = [self.markets[t] for t in self.tickers]
        self._cum_activity = list(accumulate(m.activity for m in self._ordered))
        # Open bars waiting for their window to close: (end_ms, serial, ev, market, acc).
        self._closing: list[tuple[int, int, str, TickerMarket, _BarAcc]] = []
        self._serial = 0
        self.steps = 0

    def step(self) -> list[WsEvent]:
        """One trade or quote, preceded by the bars that closed and followed by corrections."""
        events: list[WsEvent] = []
        self.run(events, 1)
        return events

    def run(self, out: list[WsEvent], steps: int) -> None:
        """Append the events of ``steps`` steps to ``out``: the bulk form of :meth:`step`.

        The same events as that many ``step()`` calls, at a fraction of the
        per-event overhead (what a venue streaming at full speed spends most on).
        """
        clock = self._clock
        closing = self._closing
        pick = self._pick.random
        cum = self._cum_activity
        total = cum[-1]
        ordered = self._ordered
        trade_ratio = self._trade_ratio
        append = out.append
        for _ in range(steps):
            now = clock()
            now_ms = now // NS_PER_MS
            while closing and closing[0][0] <= now_ms:
                _, _, ev, market, acc = heapq.heappop(closing)
                acc.queued = False
                bar = market.bar_version(ev, acc)
                append(_new(WsEvent, (ev, market.ticker, encode_bar(bar), bar)))
            market = ordered[bisect_left(cum, pick() * total)]
            if pick() >= trade_ratio:
                append(market.quote_event(now))
                continue
            event = market.trade_event(now)
            append(event)
            trade = cast(StockTrade, event.item)
            t_ms = trade.sip_ns // NS_PER_MS
            for ev, length in _BAR_SPANS:
                acc = market.bar_acc(ev, t_ms - t_ms % length, length)
                acc.add(trade)
                if acc.end_ms <= now_ms:
                    # A late trade in a bar already closed: send it again, corrected.
                    bar = market.bar_version(ev, acc)
                    append(_new(WsEvent, (ev, market.ticker, encode_bar(bar), bar)))
                elif not acc.queued:
                    acc.queued = True
                    self._serial += 1
                    heapq.heappush(closing, (acc.end_ms, self._serial, ev, market, acc))
        self.steps += steps
