"""Streams, the unit users ask about: one per (provider, symbol, channel).

A source configures ``symbols x channels`` streams; its connection (or the
connections of its plan) carries them. This registry keeps, per stream:
when its last record was seen (the provider's event time and our receive
time), how many records passed, the rate, and the expected-activity state
that tells a quiet illiquid symbol from a subscription the venue dropped.

Accounting is per batch, never per record in Python: the normalizer's output
for one frame batch is counted with ``collections.Counter`` over
``operator.attrgetter`` (C loops; by symbol alone, about 40 ns a record, when
the source has one channel of that record kind, else by (provider, symbol,
channel), about 120 ns) and each stream seen in the batch is updated once
(:meth:`StreamRegistry.observe`).

The expected-activity rule (:meth:`StreamRegistry.check`), run by the
stream task of each source about once a second:

- a stream is *missing* when its connection is live, another stream of the
  same source had a record within ``quiet_time_s``, and this one had none for
  longer than its quiet limit: ``quiet_time_s``, or ``EXPECTED_GAP_FACTOR``
  times its own mean interval between bursts when that is longer (a symbol
  that trades once a minute is not missing after 60 s of silence). Bursts,
  not records: a quiet symbol often trades many records at once (one order
  sweeping several levels) and then nothing for minutes; its mean interval
  between records says nothing about its pauses. A burst is each slice of
  ``quiet_time_s / EXPECTED_GAP_FACTOR`` seconds holding a record of it, so
  a stream flowing without pause has the quiet limit ``quiet_time_s``;
- a missing stream is subscribed again on the live connection (action
  ``"resubscribe"``); still silent ``quiet_time_s`` later, its connection is
  replaced (``"reconnect"``, make-before-break) if the stream delivered
  in at least two bursts before in this process (one burst shows no pace: a
  symbol that traded once); still silent ``quiet_time_s`` after that (or
  after the resubscribe, for a stream without a pace), it is taken for a quiet symbol
  (state ``"quiet"``: shown, not a readiness problem) until its next record
  re-arms the rule;
- while missing (``"resubscribed"``, ``"reconnecting"``), ``/readyz`` names it.

A source whose streams are all silent is not this module's business: the
connection's stale watchdog (``stale_after_s``) reconnects it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from operator import attrgetter
from typing import Any, Final, Literal

import attrs
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from mdagent.config import SourceConfig
from mdagent.pipeline.batches import FrameBatch, WriteBatch
from mdagent.providers.registry import provider_for
from mdagent.records import Candle, Quote, Trade

__all__ = [
    "EXPECTED_GAP_FACTOR",
    "Action",
    "Stream",
    "StreamKey",
    "StreamRegistry",
    "stream_keys",
]

# A stream with a history of records is missing only after this many of its
# mean intervals without one (and never before quiet_time_s).
EXPECTED_GAP_FACTOR: Final = 10.0
# The rate shown is over windows of at least this long.
RATE_WINDOW_S: Final = 10.0

StreamKey = tuple[str, str, str]  # (provider, symbol as records spell it, channel)
State = Literal["ok", "resubscribed", "reconnecting", "quiet"]
Action = Literal["resubscribe", "reconnect"]

_key_of = attrgetter("provider", "symbol", "channel")
_symbol_of = attrgetter("symbol")
_KINDS: Final = ("trades", "quotes", "candles")


def stream_keys(source: SourceConfig) -> list[StreamKey]:
    """The streams ``source`` configures, keyed as its records spell them.

    The symbol is mapped by the provider's ``SymbolRule.same_as`` (Binance
    records carry the upper-case symbol). A wildcard symbol (Polygon ``*``)
    has no stream of its own: what it brings is not expected per symbol.
    """
    same_as = provider_for(source.provider).symbols.same_as
    return [
        (source.provider, same_as(symbol), channel)
        for symbol in source.symbols
        if symbol != "*"
        for channel in source.channels
    ]


@attrs.define
class Stream:
    """One stream's health. Monotonic times are ``trio.current_time()`` seconds."""

    key: StreamKey
    source: str
    since: float  # subscribed (or subscribed again) on a live connection
    events: int = 0  # records passed on (duplicates not counted)
    # Bursts: time slices of burst_s seconds holding a record (see quiet_limit).
    bursts: int = 0
    burst_s: float = 1.0
    _burst_slice: int = -1
    first_seen_at: float | None = None
    last_seen_at: float | None = None
    last_event_ns: int | None = None  # provider clock, ns since the epoch
    last_receive_ns: int | None = None  # local wall clock, ns since the epoch
    rate: float = 0.0  # records/s over the last full window
    state: State = "ok"
    acted_at: float = 0.0  # when the rule last acted on it
    _window_at: float = 0.0
    _window_events: int = 0

    def silent_for(self, now: float) -> float:
        """Seconds without a record, counted from its (re)subscription at the latest."""
        last = self.last_seen_at
        return now - (self.since if last is None or last < self.since else last)

    def quiet_limit(self, quiet_time_s: float) -> float:
        """How long this stream may be silent before it counts as missing.

        ``quiet_time_s``, or ``EXPECTED_GAP_FACTOR`` times the mean interval
        between its bursts (slices of ``burst_s`` holding a record) when longer.
        """
        first, last = self.first_seen_at, self.last_seen_at
        if self.bursts < 2 or first is None or last is None or last <= first:
            return quiet_time_s
        mean_interval = (last - first) / (self.bursts - 1)
        return max(quiet_time_s, EXPECTED_GAP_FACTOR * mean_interval)

    @property
    def missing(self) -> bool:
        return self.state in ("resubscribed", "reconnecting")

    def name(self) -> str:
        provider, symbol, channel = self.key
        return f"{provider}:{symbol}:{channel}"


class StreamRegistry:
    """Every configured stream's health, owned by the agent (one Trio thread).

    Written by the stream tasks (attach, detach, check) and the normalizer
    (observe); read by ``/readyz``, ``/metrics`` (as a collector) and status.
    """

    def __init__(self) -> None:
        self.streams: dict[StreamKey, Stream] = {}
        self._by_source: dict[str, list[StreamKey]] = {}
        # Per source: the one channel of each record kind it configures, or ""
        # when it has none or several (then records are counted by full key).
        self._sole_channel: dict[str, tuple[str, str, str]] = {}

    def attach(self, source: SourceConfig, now: float, *, renamed_from: str = "") -> None:
        """``source``'s streams are now subscribed on a live connection.

        New streams start their silence count now; streams the source no
        longer configures are dropped. Existing streams keep their history,
        also when the source's key changed (``renamed_from``: an unnamed
        source's key spells its symbols).
        """
        if renamed_from and renamed_from != source.key:
            self._sole_channel.pop(renamed_from, None)
            moved = self._by_source.pop(renamed_from, [])
            for key in moved:
                stream = self.streams.get(key)
                if stream is not None and stream.source == renamed_from:
                    stream.source = source.key
            self._by_source[source.key] = moved
        keys = stream_keys(source)
        for key in self._by_source.get(source.key, ()):
            gone = self.streams.get(key) if key not in keys else None
            if gone is not None and gone.source == source.key:
                del self.streams[key]
        burst_s = source.quiet_time_s / EXPECTED_GAP_FACTOR if source.quiet_time_s > 0 else 1.0
        for key in keys:
            stream = self.streams.get(key)
            if stream is None or stream.source != source.key:
                stream = self.streams[key] = Stream(key, source.key, since=now, window_at=now)
            stream.burst_s = burst_s
        self._by_source[source.key] = keys
        channels = provider_for(source.provider).channels
        of_kind = [[c for c in source.channels if channels[c].kind == k] for k in _KINDS]
        sole = [found[0] if len(found) == 1 else "" for found in of_kind]
        self._sole_channel[source.key] = (sole[0], sole[1], sole[2])

    def connected(self, source_key: str, now: float) -> None:
        """A (new) connection carries the source's streams: their silence counts from now."""
        for key in self._by_source.get(source_key, ()):
            stream = self.streams.get(key)
            if stream is not None:
                stream.since = now

    def detach(self, source_key: str) -> None:
        """The source was removed: forget its streams."""
        self._sole_channel.pop(source_key, None)
        for key in self._by_source.pop(source_key, ()):
            stream = self.streams.get(key)
            if stream is not None and stream.source == source_key:
                del self.streams[key]

    def of_source(self, source_key: str) -> list[Stream]:
        streams = self.streams
        return [streams[k] for k in self._by_source.get(source_key, ()) if k in streams]

    def observe(self, batch: FrameBatch, out: WriteBatch, now: float) -> None:
        """Count the records ``out`` holds, normalized from ``batch``, per stream.

        Per batch: the counting runs in C (Counter over attrgetter); Python
        work is per stream present in the batch. Records of streams nobody
        configured (a wildcard subscription) are not tracked.
        """
        if not batch.frames:
            return
        source = batch.source
        sole = self._sole_channel.get(source.key, ("", "", ""))
        counts: Counter[StreamKey] = Counter()
        kinds: tuple[Sequence[Trade | Quote | Candle], ...] = (out.trades, out.quotes, out.candles)
        for records, channel in zip(kinds, sole, strict=True):
            if not records:
                continue
            if channel:
                # The source's records of this kind are all of this channel
                # (a parser yields only the channels it was subscribed to).
                provider = source.provider
                for symbol, n in Counter(map(_symbol_of, records)).items():
                    counts[(provider, symbol, channel)] += n
            else:
                counts.update(map(_key_of, records))
        if not counts:
            return
        received_ns = batch.frames[-1][1]
        streams, offsets = self.streams, out.offsets
        for key, n in counts.items():
            stream = streams.get(key)
            if stream is None:
                continue
            if stream.first_seen_at is None:
                stream.first_seen_at = now
            stream.events += n
            burst_slice = int(now / stream.burst_s)
            if burst_slice != stream._burst_slice:
                stream._burst_slice = burst_slice
                stream.bursts += 1
            stream.last_seen_at = now
            stream.last_receive_ns = received_ns
            offset = offsets.get(key)
            if offset is not None and offset[1] is not None:
                stream.last_event_ns = offset[1]
            if now - stream._window_at >= RATE_WINDOW_S:
                stream.rate = (stream.events - stream._window_events) / (now - stream._window_at)
                stream._window_at, stream._window_events = now, stream.events
            if stream.state != "ok":
                stream.state = "ok"

    def check(
        self, source_key: str, now: float, quiet_time_s: float
    ) -> list[tuple[Stream, Action]]:
        """Apply the expected-activity rule (module docstring) to one source's streams.

        Returns what the caller (the source's stream task) must do, and moves
        the streams' states as if it did: ``"resubscribe"`` (subscribe the
        stream again on the live connection) or ``"reconnect"`` (replace the
        connection). ``quiet_time_s`` 0 turns the rule off.
        """
        if quiet_time_s <= 0:
            return []
        streams = self.of_source(source_key)
        flowing = any(
            s.last_seen_at is not None and now - s.last_seen_at <= quiet_time_s for s in streams
        )
        actions: list[tuple[Stream, Action]] = []
        for stream in streams:
            state = stream.state
            if state == "ok":
                if flowing and stream.silent_for(now) > stream.quiet_limit(quiet_time_s):
                    stream.state, stream.acted_at = "resubscribed", now
                    actions.append((stream, "resubscribe"))
            elif now - stream.acted_at <= quiet_time_s:
                continue
            elif state == "resubscribed" and stream.bursts >= 2:
                stream.state, stream.acted_at = "reconnecting", now
                actions.append((stream, "reconnect"))
            elif state == "resubscribed":
                # Never delivered since we started, or one burst only: no
                # pace says it should deliver now, so no reconnect (which
                # costs every stream of the source a connect where the venue
                # allows one connection).
                stream.state, stream.acted_at = "quiet", now
            elif state == "reconnecting":
                stream.state, stream.acted_at = "quiet", now
        return actions

    @staticmethod
    def reconnecting(stream: Stream, now: float) -> None:
        """The connection cannot subscribe one stream again: its replacement is next."""
        stream.state, stream.acted_at = "reconnecting", now

    def problems(self, now: float) -> list[str]:
        """One line per missing stream, for ``/readyz``."""
        found = []
        for stream in self.streams.values():
            if stream.missing:
                action = "resubscribed" if stream.state == "resubscribed" else "reconnecting"
                found.append(
                    f"{stream.name()} ({stream.source}): no events for "
                    f"{stream.silent_for(now):.1f} s while other streams of its connection "
                    f"flow; {action}"
                )
        return sorted(found)

    def detail(self, wall_ns: int | None = None) -> list[dict[str, Any]]:
        """Every stream as JSON-ready data (``/readyz`` ``streams``), ages in seconds."""
        wall_ns = time.time_ns() if wall_ns is None else wall_ns
        return [
            {
                "provider": s.key[0],
                "symbol": s.key[1],
                "channel": s.key[2],
                "source": s.source,
                "state": s.state,
                "last_event_age_s": _age(wall_ns, s.last_event_ns),
                "last_receive_age_s": _age(wall_ns, s.last_receive_ns),
                "events_per_s": round(s.rate, 3),
                "events_total": s.events,
            }
            for s in _sorted(self.streams.values())
        ]


def _age(wall_ns: int, then_ns: int | None) -> float | None:
    return None if then_ns is None else round((wall_ns - then_ns) / 1e9, 3)


class StreamCollector(Collector):
    """The registry as Prometheus series, computed at scrape time (nothing per batch).

    One series per configured stream and metric: the cardinality is the
    configuration's ``symbols x channels``, never the data's.
    """

    def __init__(self, registry: StreamRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        labels = ["provider", "symbol", "channel"]
        age = GaugeMetricFamily(
            "mdagent_stream_last_event_age_seconds",
            "Seconds since the stream's last record was received (local clock)",
            labels=labels,
        )
        events = CounterMetricFamily(
            "mdagent_stream_events",
            "Records passed on by the normalizer per stream (duplicates not counted)",
            labels=labels,
        )
        missing = GaugeMetricFamily(
            "mdagent_stream_missing",
            "1 while a stream is silent although its connection's other streams flow",
            labels=labels,
        )
        now_ns = time.time_ns()
        for stream in _sorted(self._registry.streams.values()):
            values = list(stream.key)
            if stream.last_receive_ns is not None:
                age.add_metric(values, (now_ns - stream.last_receive_ns) / 1e9)
            events.add_metric(values, stream.events)
            missing.add_metric(values, 1.0 if stream.missing else 0.0)
        yield age
        yield events
        yield missing


def _sorted(streams: Iterable[Stream]) -> list[Stream]:
    return sorted(streams, key=attrgetter("key"))
