"""Cuts the ring buffer's stream into model-sized, possibly overlapping windows.

Windows start at k · hop from the stream's first sample, as BirdNET-Analyzer cuts them. A
window that runs past the end of the stream is zero-padded; once fewer than ``min_tail``
samples remain the stream is done (BirdNET-Analyzer drops chunks shorter than 1 s), except that
a stream shorter than that still yields its one window.

Each window is stamped, as it is cut, with the stream clock's UTC of its first sample and of
the end of its valid audio. A live clock is (re-)anchored before the samples it dates are
written to the ring, so every sample of a window is dated by the anchor that stays in force.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from birdd.daemon.pipeline.ring import RingBuffer
from birdd.daemon.records import Channel, Clock, Window

MIN_TAIL_S = 1.0


def hop_samples(window_samples: int, sample_rate: int, overlap_s: float) -> int:
    """Hop length in samples; the overlap must leave a hop of at least 0.1 s."""
    window_s = window_samples / sample_rate
    if not 0 <= overlap_s <= window_s - 0.1 + 1e-9:
        raise ValueError(
            f"windows.overlap_s = {overlap_s} is out of range: use 0 to {window_s - 0.1:.1f} s "
            f"for a {window_s:g} s window"
        )
    return round((window_s - overlap_s) * sample_rate)


class Windower:
    def __init__(
        self,
        ring: RingBuffer,
        window_samples: int,
        hop: int,
        clock: Clock,
        source: str,
        channel: Channel,
    ) -> None:
        """``clock`` maps the stream's sample index, at the model's rate, to UTC."""
        self.ring = ring
        self.window_samples = window_samples
        self.hop = hop
        self.clock = clock
        self.sample_rate = clock.sample_rate
        self.min_tail = min(window_samples, int(MIN_TAIL_S * self.sample_rate))
        self.source = source
        self.channel = channel

    def windows(self) -> Iterator[Window]:
        """Yield windows until the ring is closed and drained."""
        index = 0
        while True:
            start = index * self.hop
            self.ring.wait_written(start + self.window_samples)  # then the window's memory
            samples = np.zeros(self.window_samples, dtype=np.float32)
            valid = self.ring.read(start, samples)
            if valid == 0 or (index > 0 and valid < self.min_tail):
                return
            yield self._window(index, start, samples, valid)
            self.ring.release(start + self.hop)
            index += 1

    def _window(self, index: int, start: int, samples: np.ndarray, valid: int) -> Window:
        start_utc, end_utc = self.clock.utc(start), self.clock.utc(start + valid)
        return Window(index, start, samples, valid, self.source, self.channel, start_utc, end_utc)
