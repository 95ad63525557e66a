"""A preallocated float32 ring buffer: between an audio callback and its reader, and between
capture and the windower.

Samples (frames, when ``channels`` is given) carry a monotonic index from the start of the
stream. The writer either waits for room (simulate: nothing is lost) or overwrites the oldest
unread audio and counts it (live: freshness matters more than completeness). In the overwriting
mode ``write`` never waits and allocates nothing (a ``compact`` ring aside), so a PortAudio
callback may call it.

A ring may be ``compact``: it then keeps 16-bit samples (half the memory of float32; the
capture rings of live inputs, which are 16-bit at the source almost always: a sound card, a
network stream, a camera) and gives float32 back, clipped to [-1, 1). With 250 live streams
the rings were 470 MB of birdd's 1.2 GB.

A second reader (the clip writer) may ``hold`` audio it still needs: a waiting writer then also
keeps every sample from the held index on. An overwriting writer ignores the hold: that reader
sees from ``read_span`` what it lost.
"""

from __future__ import annotations

import sys
import threading
from typing import Optional, Tuple

import numpy as np

NOBODY_WAITS = sys.maxsize
INT16_SCALE = 32768.0
INT16_STEP = np.float32(1 / INT16_SCALE)


class RingBuffer:
    def __init__(
        self,
        capacity: int,
        drop_oldest: bool,
        channels: Optional[int] = None,
        compact: bool = False,
    ) -> None:
        """A ring of ``capacity`` samples, or of ``capacity`` frames of ``channels`` samples;
        ``compact``: kept as 16-bit samples."""
        self.capacity = capacity
        self.drop_oldest = drop_oldest
        shape = (capacity,) if channels is None else (capacity, channels)
        self._data = np.zeros(shape, dtype=np.int16 if compact else np.float32)
        self._cond = threading.Condition()
        self.written = 0
        """Samples written since the stream started (the next sample's index)."""
        self.released = 0
        """Samples before this index are no longer needed by the reader."""
        self.overwritten = 0
        """Unread samples lost to overwriting (live mode only)."""
        self.held: Optional[int] = None
        """A second reader still needs the samples from this index on (None: nothing held)."""
        self.closed = False
        self._wake_at = NOBODY_WAITS
        """The least sample index a waiting reader needs written."""

    def write(self, samples: np.ndarray) -> None:
        """Append samples; in back-pressure mode this waits while the buffer is full."""
        samples = self._stored(samples)  # converted once, outside the lock
        offset = 0
        while offset < len(samples):
            with self._cond:
                room = self._wait_for_room()
                if self.closed:
                    return
                chunk = samples[offset : offset + room]
                self._copy_in(chunk)
                offset += len(chunk)
                if self.written >= self._wake_at:
                    self._wake_at = NOBODY_WAITS
                    self._cond.notify_all()

    def _wait_for_room(self) -> int:
        if self.drop_oldest:
            return self.capacity
        while not self.closed and self.written - self._kept_from() >= self.capacity:
            self._cond.wait()
        return self.capacity - (self.written - self._kept_from())

    def _kept_from(self) -> int:
        return self.released if self.held is None else min(self.released, self.held)

    def _copy_in(self, chunk: np.ndarray) -> None:
        start = self.written % self.capacity
        first = min(len(chunk), self.capacity - start)
        self._data[start : start + first] = chunk[:first]
        self._data[: len(chunk) - first] = chunk[first:]
        self.written += len(chunk)
        lost = self.written - self.capacity - self.released
        if lost > 0:
            self.overwritten += lost
            self.released += lost

    def read(self, start: int, out: np.ndarray) -> int:
        """Copy samples ``[start, start + len(out))`` into ``out`` once they are all written, or
        what there is once the stream is closed; return how many samples were copied. Samples
        already overwritten are left as zeros in ``out``."""
        _, end = self.read_span(start, out)
        return max(0, end - start)

    def wait_written(self, end: int) -> None:
        """Wait until the samples before ``end`` are written or the ring is closed. A live
        windower waits here before it allocates its next window: 250 windowers each holding
        an empty 576 kB window while the audio arrived were 144 MB."""
        with self._cond:
            self._wait_for_samples(end)

    def _wait_for_samples(self, end: int, timeout: Optional[float] = None) -> None:
        """Wait (the condition held) until ``end`` is written, the ring closes or ``timeout``
        passes. A write wakes the readers only once one of them can go on: a windower needs
        a whole window, and waking it for every block was 500 wake-ups a second at 250
        streams."""
        while not self.closed and self.written < end:
            self._wake_at = min(self._wake_at, end)
            self._cond.wait(timeout)
            if timeout is not None:
                return

    def read_span(self, start: int, out: np.ndarray) -> Tuple[int, int]:
        """``read``, returning the stream indices ``(first, end)`` that were copied: ``first``
        > ``start`` when the samples before it were already overwritten, ``end`` < ``start +
        len(out)`` when the stream closed before them."""
        with self._cond:
            self._wait_for_samples(start + len(out))
            first = max(start, self.written - self.capacity)
            end = min(self.written, start + len(out))
            count = end - first
            if count > 0:
                ring_at = first % self.capacity
                head = min(count, self.capacity - ring_at)
                self._load(out[first - start : first - start + head], ring_at, head)
                self._load(out[first - start + head : end - start], 0, count - head)
            return first, end

    def hold(self, upto: Optional[int]) -> None:
        """A second reader needs the samples from ``upto`` on (None: none any more); a
        waiting writer keeps them, an overwriting one does not."""
        with self._cond:
            self.held = upto
            self._cond.notify_all()

    def read_available(self, start: int, out: np.ndarray, timeout: float) -> Tuple[int, int]:
        """Copy what has been written from ``start`` on (at most ``len(out)``) into ``out``,
        waiting up to ``timeout`` seconds for the first sample; the reader of a live callback.

        Returns ``(first, count)``: ``first`` > ``start`` when the samples from ``start`` were
        already overwritten (the reader fell behind; they are counted in ``overwritten``).
        ``count`` is 0 when nothing arrived in time or the ring is closed and drained.
        """
        with self._cond:
            self._wait_for_samples(start + 1, timeout)
            first = max(start, self.written - self.capacity)
            count = min(len(out), self.written - first)
            if count <= 0:
                return first, 0
            ring_at = first % self.capacity
            head = min(count, self.capacity - ring_at)
            self._load(out[:head], ring_at, head)
            self._load(out[head:count], 0, count - head)
            self.released = max(self.released, first + count)
            return first, count

    def _stored(self, chunk: np.ndarray) -> np.ndarray:
        """``chunk`` as the ring keeps it: itself, or rounded 16-bit samples."""
        if self._data.dtype == np.float32:
            return chunk
        scaled = np.multiply(chunk, INT16_SCALE, dtype=np.float32)
        np.rint(scaled, out=scaled)
        np.clip(scaled, -INT16_SCALE, INT16_SCALE - 1, out=scaled)
        return scaled.astype(np.int16)

    def _load(self, out: np.ndarray, ring_at: int, count: int) -> None:
        """Copy ``count`` samples from ``ring_at`` into ``out`` as float32."""
        if self._data.dtype == np.float32:
            out[:] = self._data[ring_at : ring_at + count]
        else:
            np.multiply(self._data[ring_at : ring_at + count], INT16_STEP, out=out)

    def release(self, upto: int) -> None:
        """The reader needs no sample before ``upto`` any more; wakes a waiting writer."""
        with self._cond:
            if upto > self.released:
                self.released = min(upto, self.written)
                self._cond.notify_all()

    def close(self) -> None:
        """End of stream (or stop): readers get what there is, writers return at once."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()
