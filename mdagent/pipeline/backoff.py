"""Reconnect delays: exponential with jitter, reset after a stable connection."""

from __future__ import annotations

import random

import attrs


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
        step = min(self.max_s, self.initial_s * (2.0**self.attempt))
        self.attempt += 1
        return step / 2 + self.rng.uniform(0, step / 2)

    def reset(self) -> None:
        self.attempt = 0
