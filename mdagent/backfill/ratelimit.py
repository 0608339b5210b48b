"""A venue's request budget, shared by every REST worker of the process.

Binance counts request *weight* per IP in fixed windows aligned on the clock
(``REQUEST_WEIGHT`` 6,000 per 1 MINUTE, wire-formats.md 1.8), and reports
what the window has used so far in ``X-MBX-USED-WEIGHT-<n><unit>`` on every
response. A request that would go over is refused with 429; carrying on after
429s earns a 418 ban. So the budget is spent *before* a request is sent:

- Every request reserves its weight at send time; the window's use is the sum
  of reservations, or, when a response reported the venue's own figure (which
  also counts other processes on the IP, or a killed earlier run), that
  figure plus everything sent after the request that carried it, whichever
  is more.
- Window boundaries are ambiguous by the clock skew between us and the venue
  and by the time a request takes to arrive: a request sent just before our
  boundary may be counted in the venue's next window. So a request sent
  within the guard of a boundary counts in both windows: ``guard_s``, or the
  slowest of the recent round trips if that is longer (a loaded machine).
- 429 and 418 pause *every* request of the venue until ``Retry-After`` has
  passed (a 418 is a ban of the IP, not of one worker).

Time: ``clock`` is wall-clock seconds (``time.time``), because the venue's
windows follow the wall clock; waits use ``trio.sleep``. Tests inject
``trio.current_time`` and a ``MockClock``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

import trio


class RequestBudget:
    """Weight per window for one venue. ``limit=None``: no budget (Polygon), pauses only.

    ``acquire(weight)`` waits until the weight fits and reserves it;
    ``observe_used(used)`` feeds the venue's reported use of the current window;
    ``pause(seconds, ban=...)`` stops all requests for that long (429/418).
    """

    def __init__(
        self,
        limit: int | None,
        window_s: float = 60.0,
        *,
        guard_s: float = 0.25,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if limit is not None and limit <= 0:
            raise ValueError(f"limit must be > 0, got {limit}")
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.limit = limit
        self.window_s = window_s
        self.guard_s = guard_s
        self._clock = clock
        self._sent: deque[tuple[float, int]] = deque()  # (send time, weight)
        # (window index, venue's used weight, send time of the request that reported it)
        self._reported: tuple[int, int, float] = (-1, 0, -math.inf)
        self._paused_until = -math.inf
        self._round_trips: deque[float] = deque(maxlen=64)  # seconds, recent requests
        self.banned_until = -math.inf  # the last 418's end, for status and metrics
        self.weight_spent = 0  # total reserved, for metrics
        self.waited_s = 0.0  # time spent waiting for the budget or a pause

    def configure(self, limit: int | None, window_s: float) -> None:
        """Adopt the venue's advertised budget (Binance exchangeInfo ``rateLimits``)."""
        if limit is not None and limit <= 0:
            raise ValueError(f"limit must be > 0, got {limit}")
        self.limit = limit
        self.window_s = window_s

    def _window(self, now: float) -> int:
        return math.floor(now / self.window_s)

    @property
    def guard(self) -> float:
        """Seconds before a boundary in which a send counts in both windows."""
        slowest = max(self._round_trips, default=0.0)
        return max(self.guard_s, slowest)

    def observe_round_trip(self, seconds: float) -> None:
        """How long a request took, send to response (widens the guard under load)."""
        self._round_trips.append(seconds)

    def used(self, now: float | None = None) -> int:
        """Weight counted against the window containing ``now`` (default: the clock)."""
        if now is None:
            now = self._clock()
        index = self._window(now)
        start = index * self.window_s - self.guard
        sent = self._sent
        while sent and sent[0][0] < start - self.window_s:
            sent.popleft()  # older than any window still in question
        local = sum(w for t, w in sent if t >= start)
        reported_index, reported, reported_at = self._reported
        if reported_index != index:
            return local
        # Requests sent after the reporting one may not be in its figure yet.
        return max(local, reported + sum(w for t, w in sent if t > reported_at))

    def paused_for(self) -> float:
        """Seconds until a 429/418 pause ends (0 when none)."""
        return max(0.0, self._paused_until - self._clock())

    async def acquire(self, weight: int) -> float:
        """Wait until ``weight`` fits the current window (and no pause holds), then reserve it.

        Returns the reservation's time (pass it to :meth:`observe_used` with the
        response). Raises ValueError when ``weight`` alone is over the limit.
        """
        if self.limit is not None and weight > self.limit:
            raise ValueError(f"request weight {weight} exceeds the whole budget {self.limit}")
        while True:
            now = self._clock()
            wait = self._paused_until - now
            if wait <= 0 and self.limit is not None and self.used(now) + weight > self.limit:
                # Past the next boundary by the guard: requests sent just
                # before it may still count in the venue's new window.
                wait = (self._window(now) + 1) * self.window_s + self.guard - now
            if wait <= 0:
                self._sent.append((now, weight))
                self.weight_spent += weight
                return now
            self.waited_s += wait
            await trio.sleep(wait)

    def observe_used(self, used: int, sent_at: float) -> None:
        """A response to the request reserved at ``sent_at`` says its window has used
        ``used`` weight (counted in the window of the response's arrival, now)."""
        index = self._window(self._clock())
        reported_index, reported, _at = self._reported
        if index > reported_index or (index == reported_index and used >= reported):
            self._reported = (index, used, sent_at)

    def pause(self, seconds: float, *, ban: bool = False) -> None:
        """No request for ``seconds`` (a 429's or 418's Retry-After); never shortens a pause."""
        until = self._clock() + max(0.0, seconds)
        self._paused_until = max(self._paused_until, until)
        if ban:
            self.banned_until = max(self.banned_until, until)
