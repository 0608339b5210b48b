"""The provider contract: everything generic code may know about a provider.

A provider is one folder under ``mdagent/providers/`` and one line in
:mod:`mdagent.providers.registry`. Its :class:`Provider` description says
what the venue offers (channels and what each maps to, symbol rules, default
URLs, what its sequence numbers guarantee) and holds two halves:

- the **stream half** (:class:`StreamHalf`): a sans-IO parser (frame bytes ->
  records and dead letters) and the I/O that connects, authenticates,
  subscribes and keeps the connection alive;
- the **history half** (:class:`HistoryHalf`): sans-IO only, a REST page ->
  :class:`Page` (records + next cursor) and an error body -> :class:`ApiError`,
  the same shapes for every provider. The I/O part (the rate-limited REST
  client) belongs to the backfill work.
- optionally a **listing half** (:class:`ListingHalf`): sans-IO, a page of the
  venue's instrument list -> :class:`Listing` (Binance exchangeInfo, Polygon
  reference tickers). A provider without one is simply not synced into
  ``instruments`` and its symbols are not checked against a listing.

The config, the CLI, the bench, the stream supervisor and the normalizer ask
the registry for a description; none of them names a provider. Facts about
the wire come from ``docs/wire-formats.md``; each description cites its section.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from decimal import Decimal
from typing import Literal, Protocol, TypeVar

import attrs

from mdagent.records import Record

_E = TypeVar("_E")

# The canonical table a channel's records land in.
RecordKind = Literal["trades", "quotes", "candles"]


class Parser(Protocol):
    """Sans-IO frame parser of one source; may keep state between frames (caches)."""

    def parse(self, frame: bytes | str, received_ns: int) -> Sequence[Record]:
        """One WebSocket frame -> canonical records, ``DeadLetter``s and ``StreamControl``s.

        ``received_ns``: local wall-clock receive time (ns since the epoch).
        Never raises on bad input: a frame or element that does not parse
        becomes a ``DeadLetter`` carrying the reason and the exact payload.
        """
        ...


class StreamConnection(Protocol):
    async def receive_batch(self) -> list[str | bytes]:
        """Every data frame available now (at least one), in arrival order.

        Raises StreamError (or a subclass) when the connection ends. Safe to
        cancel: nothing received is lost by a cancelled call.
        """
        ...

    def reconnect_reason(self, frame: str | bytes) -> str | None:
        """Non-None when this frame asks the client to reconnect (e.g. serverShutdown)."""
        ...

    async def resubscribe(self, old: Source, new: Source) -> bool:
        """Change the live subscription from ``old``'s streams to ``new``'s.

        Called from another task than the reader (a reload), with the
        caller's deadline. True: done, replies checked; False: this
        connection cannot (the caller reconnects with ``new``). Raises
        StreamError when the venue refused or the connection failed: the
        subscription is then unknown and the caller reconnects.
        """
        ...

    async def renew(self, streams: Sequence[tuple[str, str]]) -> bool:
        """Subscribe ``(symbol, channel)`` streams again: the venue seems to have dropped them.

        Symbols as records spell them. Called from another task than the
        reader, with the caller's deadline. True: unsubscribed and subscribed
        again, replies checked; False: this connection cannot (the caller
        replaces the connection). Raises StreamError as ``resubscribe``.
        """
        ...


class Source(Protocol):
    """What a provider reads of one configured source (``config.SourceConfig`` is one).

    A protocol rather than the config class, so provider packages sit below
    the config (which asks the registry) instead of importing it back.
    """

    @property
    def symbols(self) -> tuple[str, ...]: ...

    @property
    def channels(self) -> tuple[str, ...]: ...

    @property
    def api_key_env(self) -> str | None: ...

    @property
    def ca_file(self) -> str:
        """A PEM file of CAs to verify ``wss://`` servers against; "" for the system's."""
        ...

    def effective_ws_url(self) -> str:
        """``ws_url``, or the provider's default when the source sets none."""
        ...

    def api_key(self) -> str | None:
        """The secret named by ``api_key_env``, read from the environment now; None if unset."""
        ...


class StreamHalf(Protocol):
    """The streaming side of a provider: parser (sans-IO) and connection (I/O)."""

    def new_parser(self, source: Source) -> Parser:
        """A fresh parser for one connection of ``source`` (parsers are not shared)."""
        ...

    def connect(self, source: Source) -> AbstractAsyncContextManager[StreamConnection]:
        """Open, authenticate and subscribe; the context closes the connection.

        Subscription, authentication and keepalive are the provider's: the
        stream task only reads batches. Raises ``StreamError`` for transient
        failures (retried with backoff) and ``AuthFailed`` for a refused
        credential (retried slowly). The caller sets no timeout; the
        provider bounds its own handshake.
        """
        ...

    def connection_urls(self, source: Source) -> list[str]:
        """The URL of each connection ``connect`` opens for ``source`` (its connection plan)."""
        ...

    def subscribe_messages(self, source: Source) -> list[str]:
        """The text messages the client sends after connecting to subscribe ``source``.

        Empty when the subscription is part of the URL (as on Binance's
        combined streams). Pure: no I/O, no secrets (auth is separate).
        """
        ...


@attrs.frozen
class SequenceRule:
    """How far a channel's ``seq`` can be trusted, which decides dedup and gap detection.

    identifies: a record's seq is unique and increasing (Binance trade ``t``,
        aggTrade ``a``, bookTicker ``u``): a seq at or below the last one seen
        or committed is a duplicate. When False (Polygon ``q``: shared by two
        trades, seen going backwards, reset per New York session; wire-formats
        2.7), duplicates are found by natural key (``pipeline/dedup.py``) and
        the seq is stored as a hint only.
    contiguous: every next seq is previous + 1 (gaps are exact id ranges).
    candle_interval_ns: bars exist for every interval (Binance klines), so a
        missing open time is a gap.
    session_bounds_ns: for a seq that restarts per trading session, the
        [start, end) in Unix ns of the session holding a time (Polygon: the
        New York date). The normalizer uses it only to know when the seq may
        have restarted, never to decide that a record is a repeat.
    """

    identifies: bool = False
    contiguous: bool = False
    candle_interval_ns: int | None = None
    session_bounds_ns: Callable[[int], tuple[int, int]] | None = None


@attrs.frozen
class Channel:
    """One configurable channel: its name in config, its table and its sequence rule.

    ``name``: as written in ``[[sources]].channels`` (and in ``stream_offsets``).
    ``kind``: the canonical table its records go to.
    ``sequence``: what its ``seq`` guarantees.
    ``history``: True when the provider's REST API can refill a gap of it.
    """

    name: str
    kind: RecordKind
    sequence: SequenceRule = SequenceRule()
    history: bool = True


def _as_written(symbol: str) -> str:
    return symbol


@attrs.frozen
class SymbolRule:
    """Which symbols a provider accepts in config, and which two are the same.

    ``problem``: why a symbol cannot be configured (a phrase for the config
    error), or None when it can. ``same_as``: the form two symbols share when
    they name one stream (Binance: case-insensitive; Polygon: as written,
    tickers are case-sensitive, wire-formats.md 2.7). ``doc``: the rule in words.
    """

    problem: Callable[[str], str | None]
    doc: str
    same_as: Callable[[str], str] = _as_written


@attrs.frozen
class PageRequest:
    """What a history page was asked for; the parser needs it to build records.

    ``symbol``: as configured. ``channel``: the stream channel the page refills
    (its records carry this channel, so they share natural keys with the
    stream's). ``limit``: the rows asked for; a full page means more may follow.
    """

    symbol: str
    channel: str
    limit: int


@attrs.frozen
class Page:
    """One parsed REST page, the same shape for every provider.

    ``records``: canonical records in the page's order, with a ``DeadLetter``
    for each row that did not parse (never silently dropped).
    ``next_cursor``: opaque text the history I/O sends back to get the next
    page (a query fragment such as ``fromId=124`` or a provider's
    ``next_url``); None when this was the last page.
    """

    records: list[Record]
    next_cursor: str | None


@attrs.frozen
class ApiError:
    """A provider's error reply to a REST call, the same shape for every provider.

    ``http_status``: the HTTP status. ``code``: the provider's own error code
    or status word as text (Binance ``-1121``, Polygon ``NOT_AUTHORIZED``), or
    None. ``message``: the provider's text, verbatim.
    """

    http_status: int
    code: str | None
    message: str


class HistoryHalf(Protocol):
    """The sans-IO REST side of a provider (the I/O is the backfill issue's)."""

    def parse_page(self, request: PageRequest, body: bytes, received_ns: int) -> Page:
        """One successful REST response body -> :class:`Page`.

        Raises ValueError when ``request.channel`` has no history endpoint.
        ``received_ns``: local receive time, stored on every record.
        """
        ...

    def parse_error(self, http_status: int, body: bytes) -> ApiError | None:
        """A failed call's body -> :class:`ApiError`, or None if it is not the provider's error shape."""
        ...


@attrs.frozen
class Instrument:
    """One instrument as the venue lists it: a row of the ``instruments`` table.

    ``symbol``: the venue's spelling. ``status``: the venue's word for it
    (Binance ``TRADING``, ``BREAK``, ``HALT``...; Polygon ``active`` /
    ``inactive``). ``active``: trading now (Binance: status ``TRADING``;
    Polygon: ``active`` true). ``tick_size`` / ``lot_size``: the price and
    quantity steps, exact decimals from the venue's text (Binance
    ``PRICE_FILTER.tickSize``, ``LOT_SIZE.stepSize``); None when the venue
    does not say (Polygon). ``base_asset`` / ``quote_asset`` (Polygon: the
    currency as quote), ``name``, ``market``, ``type``: None when not given.
    ``raw``: the venue's JSON object for it, verbatim.
    """

    symbol: str
    status: str
    active: bool
    raw: bytes
    base_asset: str | None = None
    quote_asset: str | None = None
    tick_size: Decimal | None = None
    lot_size: Decimal | None = None
    name: str | None = None
    market: str | None = None
    type: str | None = None


@attrs.frozen
class Listing:
    """One parsed page of a venue's instrument list.

    ``instruments``: in the page's order. ``unreadable``: entries that did not
    parse (left out; the sync logs the count). ``next_cursor``: opaque text
    the listing I/O follows for the next page (Polygon ``next_url``); None on
    the last page.
    """

    instruments: list[Instrument]
    next_cursor: str | None = None
    unreadable: int = 0


def listing_of(
    entries: Sequence[_E],
    read: Callable[[_E], Instrument],
    errors: tuple[type[Exception], ...],
    next_cursor: str | None = None,
) -> Listing:
    """A :class:`Listing` of ``read(entry)`` for each entry; an entry whose read
    raises one of ``errors`` is counted unreadable, never fatal to the page."""
    found: list[Instrument] = []
    unreadable = 0
    for entry in entries:
        try:
            found.append(read(entry))
        except errors:
            unreadable += 1
    return Listing(found, next_cursor, unreadable)


class ListingHalf(Protocol):
    """The sans-IO side of a venue's instrument list (optional per provider)."""

    def parse_listing(self, body: bytes) -> Listing:
        """One successful response body -> :class:`Listing`.

        Raises ValueError when the body is not a listing at all (truncated,
        another shape): a failed request, never an empty listing.
        """
        ...

    def listed_as(self, symbol: str) -> str | None:
        """How the listing spells the configured ``symbol`` (Binance: upper case);
        None when the symbol names no single instrument (Polygon ``*``)."""
        ...


@attrs.frozen
class Provider:
    """One provider, described once (see the module docstring).

    ``name``: the config's ``provider`` value, the ``provider`` column of every
    table. ``title``: how people write it, for messages. ``channels``: every
    valid channel by name. ``ws_url`` / ``rest_url``: the defaults when a
    source sets none. ``api_key_required``: a source must name
    ``api_key_env``. ``listing``: the instrument list's parser, None when
    the provider has none to sync. ``testing``: the package of
    its testing kit (fake venue and bench profile, ``mdagent/testing/kit.py``),
    imported only when asked for (``mdagent fake-venue``, ``mdagent bench``),
    so the agent never loads test doubles. ``single_connection``: the venue
    allows one simultaneous connection per account (key), so a source of it
    is never split over worker processes (``mdagent/shards/assign.py``).
    """

    name: str
    title: str
    channels: Mapping[str, Channel]
    symbols: SymbolRule
    ws_url: str
    rest_url: str
    stream: StreamHalf
    history: HistoryHalf
    api_key_required: bool = False
    listing: ListingHalf | None = None
    testing: str | None = None
    single_connection: bool = False

    def channel(self, name: str) -> Channel | None:
        """The channel configured as ``name``, or None when the provider has none such."""
        return self.channels.get(name)

    def sequence_rule(self, channel: str) -> SequenceRule:
        """The channel's rule; an unknown channel has none (config rejects those first)."""
        spec = self.channels.get(channel)
        return spec.sequence if spec is not None else SequenceRule()


def channel_table(channels: Sequence[Channel]) -> dict[str, Channel]:
    """``channels`` keyed by name, for :attr:`Provider.channels`."""
    return {c.name: c for c in channels}
