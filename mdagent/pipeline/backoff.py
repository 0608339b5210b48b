"""Reconnect delays: exponential with jitter, reset after a stable connection."""

from __future__ import annotations

import random

import attrs

# 2.0 ** 1024 overflows (OverflowError, not inf); by 2 ** 64 any step has
# long reached its cap, and attempts keep counting for as long as an outage
# lasts (about an hour of database outage reached 1024 at the writer's 5 s cap).
_MAX_EXPONENT = 64


@attrs.define
class Backoff:
    initial_s: float
    max_s: float
    rng: random.Random = attrs.field(factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        """Equal jitter: half the exponential step fixed, half random.

        The fixed half keeps a hot loop impossible; the random half spreads
        many agents reconnecting after one venue restart.
        """
        step = min(self.max_s, self.initial_s * (2.0 ** min(self.attempt, _MAX_EXPONENT)))
        self.attempt += 1
        return step / 2 + self.rng.uniform(0, step / 2)

    def reset(self) -> None:
        self.attempt = 0
