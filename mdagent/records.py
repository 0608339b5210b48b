"""Canonical records: what every provider parser produces and the writer stores.

Records are msgspec Structs rather than attrs classes because one is built per
market event on the hot path, and a Struct is several times cheaper to create
(C-level __init__, no GC tracking). They are frozen values with no I/O.

Conventions shared by every provider:
- Prices and sizes are ``str`` holding the provider's exact decimal literal
  (validated by the parser). They are never converted to float; PostgreSQL
  parses them into ``numeric``.
- ``ts_ns`` is the event time in integer nanoseconds since the Unix epoch, at
  the provider's full precision (Binance ms or us, Polygon WebSocket ms,
  Polygon REST ns). The database key column ``ts`` is ``ts_ns`` truncated to
  milliseconds so that the same trade seen on a WebSocket (ms) and over REST
  (ns) has the same natural key.
- ``received_ns`` is the local wall-clock receive time in nanoseconds.
- ``channel`` is the configured channel name ("trade", "aggTrade",
  "bookTicker", "kline_1m", "T", "Q", "AM", "A"); with (provider, symbol) it
  keys ``stream_offsets``.
- ``seq`` is the provider's ordering number for that channel (Binance trade id,
  aggregate id, bookTicker update id; Polygon sequence number) or None.
"""

from __future__ import annotations

import msgspec


class Trade(msgspec.Struct, frozen=True, gc=False):
    provider: str
    symbol: str
    channel: str
    trade_id: str  # natural id within (provider, symbol, channel), see README
    seq: int | None
    ts_ns: int
    price: str
    size: str
    received_ns: int
    is_buyer_maker: bool | None = None
    exchange: int | None = None
    tape: int | None = None
    conditions: tuple[int, ...] | None = None
    trf_id: int | None = None
    first_trade_id: int | None = None  # Binance aggTrade f
    last_trade_id: int | None = None  # Binance aggTrade l
    correction: int | None = None


class Quote(msgspec.Struct, frozen=True, gc=False):
    provider: str
    symbol: str
    channel: str
    seq: int | None
    ts_ns: int  # event time; Binance bookTicker has none, so receive time
    bid_price: str
    bid_size: str
    ask_price: str
    ask_size: str
    received_ns: int
    bid_exchange: int | None = None
    ask_exchange: int | None = None
    conditions: tuple[int, ...] | None = None
    indicators: tuple[int, ...] | None = None
    tape: int | None = None


class Candle(msgspec.Struct, frozen=True, gc=False):
    provider: str
    symbol: str
    channel: str
    interval: str  # "1s", "1m", ... (Polygon A -> "1s", AM -> "1m")
    open_ts_ns: int
    close_ts_ns: int
    open: str
    high: str
    low: str
    close: str
    volume: str
    received_ns: int
    final: bool  # Binance kline x; Polygon bars may be corrected: False
    event_ts_ns: int  # orders re-sends of the same bar: newest wins
    quote_volume: str | None = None
    vwap: str | None = None
    trade_count: int | None = None


class DeadLetter(msgspec.Struct, frozen=True, gc=False):
    """Input that could not be parsed or validated, kept with the reason."""

    provider: str
    source: str  # stream or endpoint the input came from
    reason: str
    payload: str
    received_ns: int


class RawFrame(msgspec.Struct, frozen=True, gc=False):
    """A stream frame exactly as received, for ``trades_raw`` (archive_raw)."""

    provider: str
    source: str
    payload: str
    received_ns: int


class Gap(msgspec.Struct, frozen=True, gc=False):
    """A range the recorder knows it did not receive; becomes a fetch_job.

    Sequence ranges are inclusive. A time range is used where the channel has
    no contiguous sequence (candles, or a stream stopped by backpressure).
    """

    provider: str
    symbol: str
    channel: str
    reason: str
    from_seq: int | None = None
    to_seq: int | None = None
    from_ts_ns: int | None = None
    to_ts_ns: int | None = None


class StreamControl(msgspec.Struct, frozen=True, gc=False):
    """A provider message about the connection, not market data.

    kind: "server_shutdown" (reconnect now), "status" (Polygon status event),
    "subscribed", "error". ``status`` holds the provider's status string
    (e.g. "auth_success", "auth_failed", "max_connections").
    """

    provider: str
    kind: str
    status: str = ""
    message: str = ""


MarketRecord = Trade | Quote | Candle
Record = Trade | Quote | Candle | DeadLetter | RawFrame | Gap | StreamControl
