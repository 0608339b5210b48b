"""The fake Polygon venue's shared log of stream events, as parallel columns.

Every connection reads the one log through a cursor (an absolute position:
``base`` + index). An event is three columns at the same index: its
subscription key (``"T.AAPL"``, the param that selects it), its JSON text and
its :class:`WsEvent` (ticker and venue-side value, for ground truth and
faults). Columns rather than a tuple per event: a connection picks the
texts it wants with one C-level pass over keys (``compress`` by set
membership), and a replayed tape appends its rendered texts next to key and
event objects it already holds, so no object is built per event but the
text (at max rate the venue's CPU per event is taken from the agent and the
database being measured on the same cores).
"""

from __future__ import annotations

from collections.abc import Iterable

from mdagent.testing.polygon.marketgen import WsEvent

__all__ = ["EventLog", "subscription_key"]


def subscription_key(ev: str, ticker: str) -> str:
    """The subscribe param that selects events of type ``ev`` for ``ticker``: ``"T.AAPL"``."""
    return f"{ev}.{ticker}"


class EventLog:
    """Stream events at absolute positions ``base`` .. ``base + len(self)``, oldest first.

    ``keys[i]``, ``texts[i]`` and ``events[i]`` are the subscription key,
    the wire text and the :class:`WsEvent` of the event at ``base + i``
    (a replayed event's ``WsEvent`` is the tape's first pass: its text is
    not the one sent, ``texts[i]`` is).
    """

    __slots__ = ("base", "events", "keys", "texts")

    def __init__(self) -> None:
        self.base = 0
        self.keys: list[str] = []
        self.texts: list[str] = []
        self.events: list[WsEvent] = []

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, events: Iterable[WsEvent]) -> None:
        """Append live events (each sent as its own text)."""
        for event in events:
            self.keys.append(subscription_key(event.ev, event.ticker))
            self.texts.append(event.text)
            self.events.append(event)

    def drop_before(self, position: int) -> None:
        """Forget the events before absolute ``position`` (at most all of them)."""
        cut = min(position - self.base, len(self.texts))
        if cut <= 0:
            return
        del self.keys[:cut]
        del self.texts[:cut]
        del self.events[:cut]
        self.base += cut
