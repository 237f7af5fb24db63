"""Reconnect delays: exponential 1 s -> max with full jitter, so a fleet does not reconnect in lockstep."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, base: float = 1.0, maximum: float = 60.0, rng: random.Random | None = None) -> None:
        self.base = base
        self.maximum = maximum
        self._attempt = 0
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        return min(self.maximum, self.base * (2 ** min(self._attempt, 30)))

    def next(self) -> float:
        """Delay before the next attempt: uniform in [0, ceiling], ceiling doubling each failure."""
        delay = self._rng.uniform(0, self.ceiling())
        self._attempt += 1
        return delay

    def to_max(self) -> float:
        """For auth failures: wait out (jittered within the upper half of) the maximum, never hammer."""
        self._attempt = 30
        return self._rng.uniform(self.maximum / 2, self.maximum)

    def reset(self) -> None:
        self._attempt = 0
