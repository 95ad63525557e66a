"""The one backoff every reconnecting part uses: live inputs, the MQTT station client and
``birdd listen``.

Capped exponential with jitter, reset on success: the n-th wait after the last success is
``min(max_s, first_s * 2**n)`` times a random factor in [0.5, 1]. The jitter keeps stations
that lost power together (or cameras that rebooted together) from retrying in step.
"""

from __future__ import annotations

import random
from typing import Callable

JITTER_LOW = 0.5
"""The shortest wait is this fraction of the capped exponential one."""
MAX_DOUBLINGS = 32
"""``2**n`` stops growing here, so a source waited on for years does not overflow."""


class Backoff:
    """The waits between attempts to reach something that is not there yet."""

    def __init__(
        self, first_s: float, max_s: float, jitter: Callable[[], float] = random.random
    ) -> None:
        """``jitter`` returns a number in [0, 1) (``random.random``; tests give their own)."""
        self.first_s, self.max_s = first_s, max(first_s, max_s)
        self.failures = 0
        """Attempts that failed since the last success."""
        self._jitter = jitter

    @property
    def capped(self) -> bool:
        """True when the next wait is at the cap (retrying at the slowest pace)."""
        return self._ceiling() >= self.max_s

    def next(self) -> float:
        """The wait before the next attempt; counts one more failure."""
        ceiling = self._ceiling()
        self.failures += 1
        return ceiling * (JITTER_LOW + (1 - JITTER_LOW) * self._jitter())

    def reset(self) -> None:
        """It worked: the next failure starts again from ``first_s``."""
        self.failures = 0

    def _ceiling(self) -> float:
        return min(self.max_s, self.first_s * 2 ** min(self.failures, MAX_DOUBLINGS))
