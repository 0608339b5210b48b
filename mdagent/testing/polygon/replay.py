"""A market tape generated once and played again and again, shifted in time.

Why: generating the fake market costs the venue ~5 us of CPU per event
(prices, sizes, books, bars, history), which at 100,000+ events/s is half a
core of the two the bench machine has. A real venue is not on the
recorder's machine; a venue that spends that much competes with the agent
and the database for the cores being measured, and a bare receive against it
measures the venue. Playing a tape back costs ~0.5 us per event sent,
framing included (see below).

The tape is one minute of market: ``events`` steps of :class:`StockMarket`
on a virtual clock spacing them evenly over 60 s, ending just past a minute
boundary, so that each pass closes one bar per ticker and late trades
correct closed bars as often as in a live minute. Pass ``k`` (from 0) plays
the same events with every time field (``t``, ``trft``, a bar's ``s`` and
``e``) moved ``k`` minutes later and every SIP sequence number ``q`` moved
``k x`` (the tape's largest + 1): each pass is new events with new natural
keys, in order, never a repeat of an earlier pass. Played faster than 60 s a
pass, event time runs ahead of the wall clock.

Only the text is played: the events carry no venue-side value (``item`` is
the first pass's), so a replaying venue keeps no ground truth of what it
sent (:class:`FakePolygon` refuses ``record_sent`` with a replay), and a
fault that records what it kept off the stream records first-pass values.

Rendering is per chunk of ``_CHUNK`` events: one ``%`` over the chunk's
templates joined by a separator, one ``split``, and one ``map(add, ...)``
moving the chunk's values to the next pass, instead of a format, a tuple
and a :class:`WsEvent` per event (the venue spent most of its CPU there at
max rate). Measured offline on the bench's 200,000-event tape, the venue's
whole pull-and-frame path costs 0.48 us of CPU per event sent, 1.62 us
rendering event by event.
"""

from __future__ import annotations

import re
from operator import add
from typing import Final

from mdagent.testing.polygon.eventlog import EventLog, subscription_key
from mdagent.testing.polygon.marketgen import NS_PER_MS, StockMarket, WsEvent

__all__ = ["ReplayMarket"]

_MS_PER_MINUTE: Final = 60_000
_NS_PER_MINUTE: Final = _MS_PER_MINUTE * NS_PER_MS
# The integer fields a replay moves, by event type: times in ms (a trade's
# or quote's ``t`` and a TRF's ``trft``; a bar's ``s`` and ``e``) and the
# SIP sequence number ``q`` (a trade's ``s`` is its size, left alone).
_FIELDS: Final = {
    "T": re.compile(r'"(t|trft|q)":(\d+)'),
    "Q": re.compile(r'"(t|q)":(\d+)'),
    "AM": re.compile(r'"(s|e)":(\d+)'),
    "A": re.compile(r'"(s|e)":(\d+)'),
}
_TIME_FIELDS: Final = frozenset(("t", "trft", "s", "e"))
# Events rendered by one % operation: large enough that the per-chunk
# overhead is small per event (256 cost ~3% more CPU per event sent, 4096 no
# less), small enough that what is rendered ahead of the log stays small
# (~120 kB of text).
_CHUNK: Final = 1024
# Joins a chunk's event templates, split on after rendering: a raw control
# character never occurs in JSON text (RFC 8259 section 7: escaped in
# strings, not whitespace), so it cannot be part of an event.
_SEP: Final = "\x00"
_new = tuple.__new__


def _escaped(text: str) -> str:
    """``text`` as a literal part of a %-template."""
    return text.replace("%", "%%")


class ReplayMarket:
    """``events`` steps of a :class:`StockMarket`, played in a loop, shifted each pass.

    :meth:`play` appends the next events to a venue's :class:`EventLog`;
    ``run(out, steps)`` appends them to a list as :class:`WsEvent` (the
    interface of :meth:`StockMarket.run`; here one tape event per step, the
    tape holding the bars its steps closed). ``now_ns``: wall time the tape's
    minute starts from (the minute boundary after it ends the tape). Raises
    ValueError for fewer than 1 event.
    """

    def __init__(
        self,
        tickers: list[str],
        seed: int,
        *,
        events: int,
        now_ns: int,
        late_ratio: float = 0.02,
    ) -> None:
        if events < 1:
            raise ValueError(f"a replay needs at least 1 event, got {events}")
        # The minute [boundary - 60 s + 0.1 s, boundary + 0.1 s), boundary the
        # next after now_ns: the bar of the minute before it closes near the end.
        boundary_ns = (now_ns // _NS_PER_MINUTE + 1) * _NS_PER_MINUTE
        start_ns = boundary_ns - _NS_PER_MINUTE + _NS_PER_MINUTE // 600
        step_ns = max(1, _NS_PER_MINUTE // events)
        clock = iter(range(start_ns, start_ns + (events + 1) * step_ns * 2, step_ns))
        market = StockMarket(
            tickers, seed, clock_ns=clock.__next__, max_history=1, late_ratio=late_ratio
        )
        self._tape: list[WsEvent] = []
        market.run(self._tape, events)
        # Each text as a %-template with a slot per moved field, the fields'
        # first-pass values and which of them are times.
        templates: list[str] = []
        values: list[list[int]] = []
        kinds: list[list[bool]] = []
        last_ms = start_ns // NS_PER_MS
        top_q = 0
        for event in self._tape:
            if _SEP in event.text:
                raise ValueError(f"an event text holds a control character: {event.text!r}")
            pieces: list[str] = []
            fields: list[int] = []
            times: list[bool] = []
            at = 0
            pattern = _FIELDS.get(event.ev)
            for m in pattern.finditer(event.text) if pattern else ():
                pieces.append(_escaped(event.text[at : m.start(2)]))
                value = int(m.group(2))
                is_time = m.group(1) in _TIME_FIELDS
                fields.append(value)
                times.append(is_time)
                if is_time:
                    last_ms = max(last_ms, value)
                else:
                    top_q = max(top_q, value)
                at = m.end(2)
            pieces.append(_escaped(event.text[at:]))
            templates.append("%d".join(pieces))
            values.append(fields)
            kinds.append(times)
        length_ms = last_ms - start_ns // NS_PER_MS + 1
        self.span_ms = -(-length_ms // _MS_PER_MINUTE) * _MS_PER_MINUTE  # one minute
        self.q_span = top_q + 1
        # Shared key objects: one per (ev, ticker), its hash computed once.
        shared: dict[str, str] = {}
        self._keys = [
            shared.setdefault(key, key)
            for key in (subscription_key(e.ev, e.ticker) for e in self._tape)
        ]
        # Per chunk: its first tape index, its joined template, the values of
        # its next render (all its events' fields, flat) and what a pass adds
        # to each of them.
        self._starts = range(0, len(self._tape), _CHUNK)
        self._templates = [_SEP.join(templates[s : s + _CHUNK]) for s in self._starts]
        self._values = [
            tuple(v for fields in values[s : s + _CHUNK] for v in fields) for s in self._starts
        ]
        self._units = [
            tuple(
                self.span_ms if t else self.q_span for times in kinds[s : s + _CHUNK] for t in times
            )
            for s in self._starts
        ]
        # The chunk being played: its number, its texts and how many were played.
        self._chunk = -1
        self._texts: list[str] = []
        self._at = 0
        self.steps = 0

    def play(self, log: EventLog, steps: int) -> None:
        """Append the next ``steps`` events of the loop to ``log``."""
        self.steps += steps
        while steps:
            if self._at == len(self._texts):
                self._render_next()
            at = self._at
            end = min(len(self._texts), at + steps)
            start = self._starts[self._chunk]
            log.keys += self._keys[start + at : start + end]
            log.texts += self._texts[at:end]
            log.events += self._tape[start + at : start + end]
            steps -= end - at
            self._at = end

    def run(self, out: list[WsEvent], steps: int) -> None:
        """Append the next ``steps`` events of the loop to ``out``, each as a :class:`WsEvent`."""
        log = EventLog()
        self.play(log, steps)
        out += (
            _new(WsEvent, (e.ev, e.ticker, text, e.item))
            for e, text in zip(log.events, log.texts, strict=True)
        )

    def _render_next(self) -> None:
        """Render the next chunk of the loop and move its values on by one pass."""
        c = self._chunk = (self._chunk + 1) % len(self._starts)
        values = self._values[c]
        self._texts = (self._templates[c] % values).split(_SEP)
        self._values[c] = tuple(map(add, values, self._units[c]))
        self._at = 0
