"""Deterministic, seeded market data for the fake venues (sans-IO, no trio).

A :class:`SymbolMarket` is one symbol's market: a sequence of taker orders,
each filling 1-3 trades at one price (one aggTrade), usually moving the top
of book. The *content* of the sequence (ids, prices, quantities, sides, book
update ids) depends only on ``(seed, symbol)``; only the timestamps come from
the clock, because consumers measure latency from them.

Prices and quantities are integers in units of 1e-8 (Binance prints 8
decimals) and are formatted with integer arithmetic: a float never touches a
price, so the strings are exact by construction.

The market is generated lazily, when a consumer first asks for the next
event, and the history is kept (bounded) so REST answers come from the very
trades the stream sent.
"""

from __future__ import annotations

import random
import time
from bisect import bisect_left, bisect_right
from calendar import monthrange
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, NamedTuple, TypeVar

import attrs

from mdagent.providers.binance.channels import BINANCE_KLINE_INTERVALS, BINANCE_KLINE_SECONDS

__all__ = [
    "KLINE_INTERVALS",
    "SCALE",
    "AggTrade",
    "BookTop",
    "HistoryEvicted",
    "KlineBar",
    "MarketEvent",
    "SymbolMarket",
    "SymbolSpec",
    "Trade",
    "bar_bounds",
    "format_units",
    "now_us",
    "select_by_time",
    "symbol_spec",
]

SCALE = 10**8
"""Prices and quantities are integers in units of 1/SCALE."""

_INTERVAL_SECONDS = BINANCE_KLINE_SECONDS
KLINE_INTERVALS: tuple[str, ...] = BINANCE_KLINE_INTERVALS
_US = 1_000_000
# 1970-01-01 was a Thursday; Binance weekly bars open on Monday 00:00 UTC.
_WEEK_OFFSET_US = 4 * 86400 * _US

_KNOWN_PRICES = {"BTC": 60_000, "ETH": 3_000, "BNB": 600, "SOL": 150, "XRP": 1, "DOGE": 1}
_QUOTE_ASSETS = ("USDT", "USDC", "FDUSD", "BUSD", "BTC", "ETH", "BNB", "EUR", "TRY")


def now_us() -> int:
    """Wall-clock time in µs (the venue's clock)."""
    return time.time_ns() // 1000


def format_units(units: int) -> str:
    """``123450000`` -> ``"1.23450000"``: exact, 8 decimals, never via float."""
    sign = "-" if units < 0 else ""
    units = abs(units)
    return f"{sign}{units // SCALE}.{units % SCALE:08d}"


class Trade(NamedTuple):
    id: int
    price: int
    qty: int
    p: str
    q: str
    time_us: int
    buyer_maker: bool
    agg_id: int


class AggTrade(NamedTuple):
    id: int
    first_id: int
    last_id: int
    price: int
    qty: int
    p: str
    q: str
    time_us: int
    buyer_maker: bool


class BookTop(NamedTuple):
    update_id: int
    bid: int
    bid_qty: int
    ask: int
    ask_qty: int
    b: str
    B: str
    a: str
    A: str


class MarketEvent(NamedTuple):
    """One taker order: an aggTrade, its trades, and the top of book after it (if it moved)."""

    agg: AggTrade
    trades: tuple[Trade, ...]
    book: BookTop | None


class HistoryEvicted(LookupError):
    """The requested event is older than the bounded history keeps."""


@attrs.frozen
class SymbolSpec:
    symbol: str
    base_asset: str
    quote_asset: str
    start_price: int
    tick: int
    step: int
    first_trade_id: int
    first_agg_id: int
    first_book_id: int


def symbol_spec(symbol: str, seed: int) -> SymbolSpec:
    """Static, seed-dependent parameters of a symbol (upper-case, e.g. ``BTCUSDT``)."""
    quote = next((q for q in _QUOTE_ASSETS if symbol.endswith(q) and len(symbol) > len(q)), "USDT")
    base = symbol[: -len(quote)] if symbol.endswith(quote) else symbol
    rng = random.Random(f"mdagent-spec:{seed}:{symbol}")
    whole = _KNOWN_PRICES.get(base) or rng.choice((2, 7, 25, 80, 300))
    price = whole * SCALE
    # About 6-7 significant digits of price resolution, like real spot pairs.
    tick = 10 ** max(0, len(str(price)) - 7)
    step = 10 ** max(0, 8 - max(0, len(str(whole)) + 1))
    return SymbolSpec(
        symbol=symbol,
        base_asset=base,
        quote_asset=quote,
        start_price=price - price % tick,
        tick=tick,
        step=step,
        first_trade_id=rng.randrange(1_000_000, 5_000_000_000),
        first_agg_id=rng.randrange(1_000_000, 2_000_000_000),
        first_book_id=rng.randrange(1_000_000, 80_000_000_000),
    )


# Tick moves per taker order (16 entries, indexed by 4 random bits) and fills per order.
_MOVES = (-2, -1, -1, -1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 0, 0)
_FILLS = (1, 1, 1, 1, 2, 2, 2, 3)

_T = TypeVar("_T")
_time_key = attrgetter("time_us")


def select_by_time(
    items: Sequence[_T], start_us: int | None, end_us: int | None, limit: int
) -> Sequence[_T]:
    """Binance's REST time rules over a time-sorted sequence (bounds inclusive).

    Neither bound: the newest ``limit``. ``start``: the oldest from then.
    ``end`` only: the newest up to it. Both: like ``start`` capped at ``end``.
    """
    hi = len(items) if end_us is None else bisect_right(items, end_us, key=_time_key)
    if start_us is None:
        return items[max(0, hi - limit) : hi]
    lo = bisect_left(items, start_us, key=_time_key)
    return items[lo : min(hi, lo + limit)]


def bar_bounds(interval: str, t_us: int) -> tuple[int, int]:
    """``(open_us, next_open_us)`` of the UTC bar of ``interval`` containing ``t_us``."""
    seconds = _INTERVAL_SECONDS.get(interval)
    if seconds is not None:
        length = seconds * _US
        offset = _WEEK_OFFSET_US if interval == "1w" else 0
        start = (t_us - offset) // length * length + offset
        return start, start + length
    if interval != "1M":
        raise ValueError(f"unknown kline interval {interval!r}")
    day = datetime.fromtimestamp(t_us // _US, UTC)
    start_dt = datetime(day.year, day.month, 1, tzinfo=UTC)
    days = monthrange(day.year, day.month)[1]
    start = int(start_dt.timestamp()) * _US
    return start, start + days * 86400 * _US


class KlineBar:
    """One candle, accumulated from trades. Volumes are exact integers
    (quote volumes in units of 1e-16, printed truncated to 8 decimals)."""

    __slots__ = (
        "c",
        "first_id",
        "h",
        "interval",
        "l",
        "last_id",
        "n",
        "next_open_us",
        "o",
        "open_us",
        "quote_volume",
        "taker_base",
        "taker_quote",
        "volume",
    )

    def __init__(self, interval: str, trade: Trade) -> None:
        self.interval = interval
        self.open_us, self.next_open_us = bar_bounds(interval, trade.time_us)
        self.first_id = trade.id
        self.o = self.h = self.l = trade.price
        self.last_id = trade.id - 1
        self.c = trade.price
        self.n = 0
        self.volume = self.quote_volume = self.taker_base = self.taker_quote = 0
        self.add(trade)

    def contains(self, time_us: int) -> bool:
        return self.open_us <= time_us < self.next_open_us

    def add(self, trade: Trade) -> None:
        price = trade.price
        if price > self.h:
            self.h = price
        if price < self.l:
            self.l = price
        self.c = price
        self.last_id = trade.id
        self.n += 1
        self.volume += trade.qty
        notional = price * trade.qty
        self.quote_volume += notional
        if not trade.buyer_maker:  # the buyer was the taker
            self.taker_base += trade.qty
            self.taker_quote += notional

    def _times(self, micros: bool) -> tuple[int, int]:
        if micros:
            return self.open_us, self.next_open_us - 1
        return self.open_us // 1000, self.next_open_us // 1000 - 1

    def ws_fields(self, symbol: str, *, closed: bool, micros: bool) -> str:
        """The ``k`` object of a kline stream event, as JSON text."""
        t_open, t_close = self._times(micros)
        return (
            f'{{"t":{t_open},"T":{t_close},"s":"{symbol}","i":"{self.interval}",'
            f'"f":{self.first_id},"L":{self.last_id},"o":"{format_units(self.o)}",'
            f'"c":"{format_units(self.c)}","h":"{format_units(self.h)}",'
            f'"l":"{format_units(self.l)}","v":"{format_units(self.volume)}","n":{self.n},'
            f'"x":{"true" if closed else "false"},'
            f'"q":"{format_units(self.quote_volume // SCALE)}",'
            f'"V":"{format_units(self.taker_base)}",'
            f'"Q":"{format_units(self.taker_quote // SCALE)}","B":"0"}}'
        )

    def rest_row(self, *, micros: bool) -> list[Any]:
        """A ``/api/v3/klines`` row."""
        t_open, t_close = self._times(micros)
        return [
            t_open,
            format_units(self.o),
            format_units(self.h),
            format_units(self.l),
            format_units(self.c),
            format_units(self.volume),
            t_close,
            format_units(self.quote_volume // SCALE),
            self.n,
            format_units(self.taker_base),
            format_units(self.taker_quote // SCALE),
            "0",
        ]

    def snapshot(self) -> dict[str, Any]:
        """A plain dict (ms times) for ground-truth records and JSON."""
        return {
            "interval": self.interval,
            "t": self.open_us // 1000,
            "T": self.next_open_us // 1000 - 1,
            "f": self.first_id,
            "L": self.last_id,
            "o": format_units(self.o),
            "h": format_units(self.h),
            "l": format_units(self.l),
            "c": format_units(self.c),
            "v": format_units(self.volume),
            "n": self.n,
            "q": format_units(self.quote_volume // SCALE),
        }


class SymbolMarket:
    """One symbol's deterministic market with a bounded, time-sorted history."""

    def __init__(
        self,
        spec: SymbolSpec,
        seed: int,
        *,
        max_history: int = 200_000,
        clock: Callable[[], int] = now_us,
    ) -> None:
        if max_history < 1:
            raise ValueError("max_history must be >= 1")
        self.spec = spec
        self.symbol = spec.symbol
        self.max_history = max_history
        self._clock = clock
        self._rng = random.Random(f"mdagent-market:{seed}:{spec.symbol}")
        self._ticks = spec.start_price // spec.tick
        self._next_trade_id = spec.first_trade_id
        self._next_agg_id = spec.first_agg_id
        self._last_time_us = 0
        self._fmt_cache: dict[int, str] = {}
        bid, ask, qty = spec.start_price - spec.tick, spec.start_price + spec.tick, 100 * spec.step
        self.book = BookTop(
            spec.first_book_id, bid, qty, ask, qty, self._fmt(bid), self._fmt(qty),
            self._fmt(ask), self._fmt(qty),
        )  # fmt: skip
        # Plain lists with a base id, trimmed in bulk: O(1) lookup by id and
        # bisect by time, which a deque (O(n) indexing) would not give.
        self._events: list[MarketEvent] = []
        self._trades: list[Trade] = []
        self._aggs: list[AggTrade] = []
        self._events_base = spec.first_agg_id
        self._trades_base = spec.first_trade_id

    # -- generation --------------------------------------------------------------------------

    @property
    def next_agg_id(self) -> int:
        """The id of the next event to be generated (the head)."""
        return self._next_agg_id

    @property
    def next_trade_id(self) -> int:
        return self._next_trade_id

    @property
    def oldest_agg_id(self) -> int:
        return self._events_base

    def event(self, agg_id: int) -> MarketEvent:
        """Event ``agg_id``: from history, or generated now if it is the head."""
        index = agg_id - self._events_base
        if index < 0:
            raise HistoryEvicted(f"{self.symbol} agg {agg_id} is older than the kept history")
        if index < len(self._events):
            return self._events[index]
        if agg_id != self._next_agg_id:
            raise IndexError(f"{self.symbol} agg {agg_id} is beyond the head {self._next_agg_id}")
        return self._generate()

    def generate_past(self, start_us: int, end_us: int, events_per_s: float) -> int:
        """Generate events timed evenly from ``start_us`` up to ``end_us``, as if the
        market had traded then; only before any other event. Returns how many."""
        if self._events:
            raise RuntimeError(f"{self.symbol}: history can only be generated before live events")
        if events_per_s <= 0 or end_us <= start_us:
            raise ValueError("need events_per_s > 0 and start_us < end_us")
        step_us = 1_000_000 / events_per_s
        n = int((end_us - start_us) / step_us)
        saved = self._clock
        times = iter([start_us + int(i * step_us) for i in range(n)])
        self._clock = times.__next__
        try:
            for _ in range(n):
                self._generate()
        finally:
            self._clock = saved
        return n

    def _fmt(self, units: int) -> str:
        # Prices walk a few ticks and quantities come from a small set, so the
        # same strings recur: caching them halves the cost of generation.
        text = self._fmt_cache.get(units)
        if text is None:
            if len(self._fmt_cache) > 8192:
                self._fmt_cache.clear()
            text = self._fmt_cache[units] = format_units(units)
        return text

    def _generate(self) -> MarketEvent:
        # One C-level draw per event, sliced into every decision: several times
        # faster than randint()/choice(), and just as deterministic.
        bits = self._rng.getrandbits(96)
        spec = self.spec
        tick, step, fmt = spec.tick, spec.step, self._fmt
        # Random walk on an integer tick count, reflected at 1 tick.
        self._ticks = max(1, self._ticks + _MOVES[bits & 15])
        price = self._ticks * tick
        p = fmt(price)
        buyer_maker = bool(bits >> 4 & 1)
        n_fills = _FILLS[bits >> 5 & 7]
        time_us = max(self._clock(), self._last_time_us)
        self._last_time_us = time_us
        agg_id = self._next_agg_id
        first = self._next_trade_id
        trades = []
        total = 0
        shift = 8
        for trade_id in range(first, first + n_fills):
            qty = ((bits >> shift & 511) + 1) * step
            shift += 9
            total += qty
            trades.append(Trade(trade_id, price, qty, p, fmt(qty), time_us, buyer_maker, agg_id))
        self._next_trade_id = first + n_fills
        self._next_agg_id = agg_id + 1
        agg = AggTrade(
            agg_id, first, first + n_fills - 1, price, total, p, fmt(total), time_us, buyer_maker
        )
        book = None
        if bits >> 35 & 7 < 6:  # the top of book moves after most taker orders
            bid = max(tick, price - tick * (bits >> 38 & 3 if bits >> 38 & 3 < 3 else 1))
            ask = bid + tick * ((bits >> 40 & 3) + 1)
            bid_qty = ((bits >> 42 & 2047) + 1) * step
            ask_qty = ((bits >> 53 & 2047) + 1) * step
            # The update id jumps: other levels changed too (gaps are normal).
            update_id = self.book.update_id + (bits >> 64 & 7) + 1
            book = BookTop(
                update_id,
                bid,
                bid_qty,
                ask,
                ask_qty,
                fmt(bid),
                fmt(bid_qty),
                fmt(ask),
                fmt(ask_qty),
            )
            self.book = book
        event = MarketEvent(agg, tuple(trades), book)
        self._events.append(event)
        self._aggs.append(agg)
        self._trades.extend(trades)
        if len(self._trades) > self.max_history + max(1000, self.max_history // 8):
            self._trim()
        return event

    def _trim(self) -> None:
        cut_trade = self._trades[len(self._trades) - self.max_history]
        cut = cut_trade.agg_id - self._events_base
        first_kept = self._events[cut].agg.first_id
        del self._events[:cut]
        del self._aggs[:cut]
        del self._trades[: first_kept - self._trades_base]
        self._events_base += cut
        self._trades_base = first_kept

    # -- history queries ---------------------------------------------------------------------

    def trade(self, trade_id: int) -> Trade | None:
        index = trade_id - self._trades_base
        if 0 <= index < len(self._trades):
            return self._trades[index]
        return None

    def trades_from_id(self, from_id: int, limit: int) -> Sequence[Trade]:
        start = max(0, from_id - self._trades_base)
        return self._trades[start : start + limit]

    def trades_by_time(
        self, start_us: int | None, end_us: int | None, limit: int
    ) -> Sequence[Trade]:
        return select_by_time(self._trades, start_us, end_us, limit)

    def aggs_from_id(self, from_id: int, limit: int) -> Sequence[AggTrade]:
        start = max(0, from_id - self._events_base)
        return self._aggs[start : start + limit]

    def aggs_by_time(
        self, start_us: int | None, end_us: int | None, limit: int
    ) -> Sequence[AggTrade]:
        return select_by_time(self._aggs, start_us, end_us, limit)

    def partial_bar(self, interval: str, upto_trade_id: int) -> KlineBar | None:
        """The bar containing trade ``upto_trade_id``, built from the history up to that trade."""
        last = self.trade(upto_trade_id)
        if last is None:
            return None
        open_us, _ = bar_bounds(interval, last.time_us)
        hi = upto_trade_id - self._trades_base + 1
        lo = bisect_left(self._trades, open_us, lo=0, hi=hi, key=_time_key)
        bar = KlineBar(interval, self._trades[lo])
        for trade in self._trades[lo + 1 : hi]:
            bar.add(trade)
        return bar

    def klines(
        self, interval: str, start_us: int | None, end_us: int | None, limit: int
    ) -> list[KlineBar]:
        """Bars (by open time, bounds inclusive) from the kept trades, same time rules as REST.

        Only bars with at least one trade exist: the fake market does not
        trade while nobody consumes it, and the stream never sent empty bars.
        """
        trades = self._trades
        if start_us is not None:
            first_open = bar_bounds(interval, start_us)[0]
            if first_open < start_us:
                first_open = bar_bounds(interval, first_open)[1]
            lo = bisect_left(trades, first_open, key=_time_key)
            hi = len(trades)
            if end_us is not None:
                hi = bisect_left(trades, bar_bounds(interval, end_us)[1], key=_time_key)
            return self._bars(interval, lo, hi, limit)
        hi = len(trades)
        if end_us is not None:
            hi = bisect_left(trades, bar_bounds(interval, end_us)[1], key=_time_key)
        # Walk back over whole bars until ``limit`` of them are covered.
        lo, bars = hi, 0
        while lo > 0 and bars < limit:
            open_us = bar_bounds(interval, trades[lo - 1].time_us)[0]
            lo = bisect_left(trades, open_us, lo=0, hi=lo, key=_time_key)
            bars += 1
        return self._bars(interval, lo, hi, limit)

    def _bars(self, interval: str, lo: int, hi: int, limit: int) -> list[KlineBar]:
        bars: list[KlineBar] = []
        bar: KlineBar | None = None
        for trade in self._trades[lo:hi]:
            if bar is not None and trade.time_us < bar.next_open_us:
                bar.add(trade)
                continue
            if len(bars) == limit:
                break
            bar = KlineBar(interval, trade)
            bars.append(bar)
        return bars

    def depth(self, limit: int) -> tuple[int, list[list[str]], list[list[str]]]:
        """A deterministic order book snapshot around the current top of book."""
        book = self.book
        rng = random.Random(book.update_id)
        tick, step = self.spec.tick, self.spec.step
        bids = [[format_units(book.bid), format_units(book.bid_qty)]]
        asks = [[format_units(book.ask), format_units(book.ask_qty)]]
        for level in range(1, limit):
            if book.bid - level * tick > 0:
                bids.append(
                    [
                        format_units(book.bid - level * tick),
                        format_units(rng.randint(1, 5000) * step),
                    ]
                )
            asks.append(
                [format_units(book.ask + level * tick), format_units(rng.randint(1, 5000) * step)]
            )
        return book.update_id, bids, asks

    def history_stats(self) -> dict[str, Any]:
        return {
            "oldest_trade_id": self._trades_base if self._trades else None,
            "next_trade_id": self._next_trade_id,
            "oldest_agg_id": self._events_base if self._events else None,
            "next_agg_id": self._next_agg_id,
            "trades_kept": len(self._trades),
            "book_update_id": self.book.update_id,
        }
