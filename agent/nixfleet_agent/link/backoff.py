"""Reconnect delays: exponential 1 s -> max with full jitter, so a fleet does not reconnect in lockstep.

A dashboard restart (a deploy) takes seconds. Doubling from the first failure would leave an agent
waiting up to 8-16 s after a 5 s outage, so the first ``fast_attempts`` retries keep the ceiling at
``base`` (uniform waits in [0, base]: a fleet still spreads its dials over that second), and only a
longer outage backs off exponentially to ``maximum``. Measured in bench/README.md ("Reconnect").
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(
        self,
        base: float = 1.0,
        maximum: float = 60.0,
        *,
        fast_attempts: int = 0,
    ) -> None:
        self.base = base
        self.maximum = maximum
        self.fast_attempts = fast_attempts
        self._attempt = 0
        self._rng = random.Random()

    def ceiling(self) -> float:
        doublings = min(max(self._attempt - self.fast_attempts, 0), 30)
        return min(self.maximum, self.base * (2**doublings))

    def next(self) -> float:
        """Delay before the next attempt: uniform in [0, ceiling], ceiling doubling each failure
        once the fast attempts are used up."""
        delay = self._rng.uniform(0, self.ceiling())
        self._attempt += 1
        return delay

    def to_max(self) -> float:
        """For auth failures: wait out (jittered within the upper half of) the maximum, never hammer."""
        self._attempt = self.fast_attempts + 30
        return self._rng.uniform(self.maximum / 2, self.maximum)

    def reset(self) -> None:
        self._attempt = 0
