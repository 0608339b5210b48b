"""A market tape generated once and played again and again, shifted in time.

Why: generating the fake market costs the venue ~5 us of CPU per event
(prices, sizes, books, bars, history), which at 100,000+ events/s is half a
core of the two the bench machine has. A real venue is not on the
recorder's machine; a venue that spends that much competes with the agent
and the database for the cores being measured, and a bare receive against it
measures the venue. Playing a tape back costs ~0.5 us per event.

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
sent and injects no faults (:class:`FakePolygon` refuses those together).
"""

from __future__ import annotations

import re
from operator import add
from typing import Final

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
_new = tuple.__new__


def _escaped(text: str) -> str:
    """``text`` as a literal part of a %-template."""
    return text.replace("%", "%%")


class ReplayMarket:
    """``events`` steps of a :class:`StockMarket`, played in a loop, shifted each pass.

    ``run(out, steps)`` appends the next ``steps`` events to ``out`` (the
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
        generated: list[WsEvent] = []
        market.run(generated, events)
        # Each text as a %-template with a slot per moved field, the fields'
        # first-pass values and which of them are times:
        # (event, template, values, kinds), kinds[i] True for a time.
        self._tape: list[tuple[WsEvent, str, tuple[int, ...], tuple[bool, ...]]] = []
        last_ms = start_ns // NS_PER_MS
        top_q = 0
        for event in generated:
            pieces: list[str] = []
            values: list[int] = []
            kinds: list[bool] = []
            at = 0
            pattern = _FIELDS.get(event.ev)
            for m in pattern.finditer(event.text) if pattern else ():
                pieces.append(_escaped(event.text[at : m.start(2)]))
                value = int(m.group(2))
                is_time = m.group(1) in _TIME_FIELDS
                values.append(value)
                kinds.append(is_time)
                if is_time:
                    last_ms = max(last_ms, value)
                else:
                    top_q = max(top_q, value)
                at = m.end(2)
            pieces.append(_escaped(event.text[at:]))
            self._tape.append((event, "%d".join(pieces), tuple(values), tuple(kinds)))
        self._patterns = {kinds for _e, _t, _v, kinds in self._tape}
        length_ms = last_ms - start_ns // NS_PER_MS + 1
        self.span_ms = -(-length_ms // _MS_PER_MINUTE) * _MS_PER_MINUTE  # one minute
        self.q_span = top_q + 1
        self._index = 0
        self._pass = 0
        self.steps = 0

    def run(self, out: list[WsEvent], steps: int) -> None:
        """Append the next ``steps`` events of the loop to ``out``."""
        tape = self._tape
        append = out.append
        shifts = self._shifts()
        for _ in range(steps):
            event, template, values, kinds = tape[self._index]
            if self._pass and values:
                text = template % tuple(map(add, values, shifts[kinds]))
                event = _new(WsEvent, (event.ev, event.ticker, text, event.item))
            append(event)
            self._index += 1
            if self._index == len(tape):
                self._index = 0
                self._pass += 1
                shifts = self._shifts()
        self.steps += steps

    def _shifts(self) -> dict[tuple[bool, ...], tuple[int, ...]]:
        """This pass's shift of each field, by the tape's patterns of kinds."""
        dt = self._pass * self.span_ms
        dq = self._pass * self.q_span
        return {k: tuple(dt if t else dq for t in k) for k in self._patterns}
