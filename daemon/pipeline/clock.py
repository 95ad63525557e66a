"""Live timestamps: a stream's sample index mapped to UTC through the audio clock.

A sound card's sample clock is not the system clock: a 48 kHz card may run at 48,005 Hz, so
counting samples from the start drifts by hundreds of milliseconds over hours. ``LiveClock``
anchors the sample counter to UTC with the capture time of a block (PortAudio's ADC time, moved
onto the system clock) and keeps re-anchoring:

- after a gap (the device came back: the counter went on but hours may have passed);
- when the observed offset between the two clocks has moved by more than ``tolerance_s``.

Each block's capture time comes late by a varying scheduling delay and never early, so the
offset is estimated as the minimum over ``window_s`` of audio (a lower envelope), not a mean.
"""

from __future__ import annotations

import bisect
import threading
from datetime import datetime, timezone
from typing import List, Optional

DEFAULT_TOLERANCE_S = 0.02
DEFAULT_WINDOW_S = 10.0
MAX_ANCHORS = 256
"""Anchors older than this many re-anchorings are forgotten (samples that old are long done)."""


class LiveClock:
    """Maps sample indices at ``sample_rate`` to UTC; safe to use from two threads (capture
    observes and anchors, post-processing converts)."""

    def __init__(
        self,
        sample_rate: int,
        origin: str,
        tolerance_s: float = DEFAULT_TOLERANCE_S,
        window_s: float = DEFAULT_WINDOW_S,
    ) -> None:
        self.sample_rate = sample_rate
        self.origin = origin
        self.tolerance_s = tolerance_s
        self._window_samples = int(window_s * sample_rate)
        self._samples: List[int] = []
        self._offsets: List[float] = []
        """Per anchor: UTC epoch seconds of sample 0 as seen from that anchor."""
        self._lock = threading.Lock()
        self._window_start: Optional[int] = None
        self._window_min = float("inf")

    @property
    def anchors(self) -> int:
        """How many times the clock was (re-)anchored."""
        with self._lock:
            return len(self._samples)

    def anchor(self, sample: int, epoch: float) -> None:
        """``sample`` was captured at ``epoch`` (UTC seconds): the start, or after a gap."""
        with self._lock:
            self._add_anchor(sample, epoch - sample / self.sample_rate)
        self._window_start, self._window_min = None, float("inf")

    def observe(self, sample: int, epoch: float) -> None:
        """A block starting at ``sample`` was captured at ``epoch`` (late by scheduling jitter).

        The first observation anchors the clock; later ones re-anchor once a window's lower
        envelope differs from the current anchor by more than the tolerance.
        """
        if not self._samples:
            self.anchor(sample, epoch)
            return
        offset = epoch - sample / self.sample_rate
        if self._window_start is None:
            self._window_start = sample
        self._window_min = min(self._window_min, offset)
        if sample - self._window_start < self._window_samples:
            return
        estimate = self._window_min
        self._window_start, self._window_min = sample, float("inf")
        with self._lock:
            if abs(estimate - self._offsets[-1]) > self.tolerance_s:
                self._add_anchor(sample, estimate)

    def epoch(self, sample: int) -> float:
        """UTC epoch seconds of ``sample`` (before the first anchor: from the first anchor)."""
        with self._lock:
            if not self._samples:
                raise RuntimeError("LiveClock used before the first audio block")
            at = max(0, bisect.bisect_right(self._samples, sample) - 1)
            return self._offsets[at] + sample / self.sample_rate

    def utc(self, sample: int) -> datetime:
        return datetime.fromtimestamp(self.epoch(sample), timezone.utc)

    def _add_anchor(self, sample: int, offset: float) -> None:
        if self._samples and sample <= self._samples[-1]:
            self._samples.pop()
            self._offsets.pop()
        self._samples.append(sample)
        self._offsets.append(offset)
        if len(self._samples) > MAX_ANCHORS:
            del self._samples[0], self._offsets[0]
