"""What every in-process network decoder does with its audio once decoded: cut it into blocks
of the configured length, hold it back to real time, and queue it for the supervisor.

Shared by the PyAV thread per stream (``pyav``) and the one reader thread for all HTTP(S)
streams (``httpaudio``), so that both deliver the same blocks at the same pace.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from birdd.daemon.sources.base import Block

AHEAD_S = 0.5
"""Like ffmpeg's ``-re`` on http(s): a decoder never runs more than this ahead of the wall
clock, so a file on a web server arrives as live audio (and the server feels the pace)."""
QUEUED_BLOCKS = 64
"""Blocks decoded and not yet read (32 s at 0.5 s blocks): more means the reader is stuck."""


@dataclass(frozen=True)
class StreamRequest:
    """What an in-process decoder is asked for: the stream, the audio it must deliver (the
    model's channels and rate, in blocks of ``block_frames``) and how long a read may stall."""

    url: str
    channels: int
    rate: int
    block_frames: int
    timeout_s: float


class Reblocker:
    """Collects decoded pieces of any length and gives them back as blocks of at least
    ``block_frames`` frames (one copy per block, not per piece)."""

    def __init__(self, block_frames: int) -> None:
        self._block_frames = block_frames
        self._pending: List[np.ndarray] = []
        self._held = 0

    def add(self, samples: np.ndarray) -> Optional[np.ndarray]:
        """Take ``samples`` ([frames, channels] float32); a whole block once there is one."""
        if len(samples):
            self._pending.append(samples)
            self._held += len(samples)
        if self._held < self._block_frames:
            return None
        block = np.concatenate(self._pending).astype(np.float32, copy=False)
        self._pending, self._held = [], 0
        return block


class RealTimePace:
    """How far a stream's delivered audio has run ahead of the wall clock since it began."""

    def __init__(self, rate: int) -> None:
        self._rate = rate
        self._began = time.monotonic()
        self._delivered = 0

    def delivered(self, frames: int) -> float:
        """Count ``frames`` more; the seconds to wait before decoding on (0 when not ahead)."""
        self._delivered += frames
        ahead = self._delivered / self._rate - (time.monotonic() - self._began)
        return max(0.0, ahead - AHEAD_S)


class BlockQueue:
    """The blocks between a decoder and its supervisor; when the supervisor stops reading, the
    oldest block is dropped, not the newest."""

    def __init__(self, size: int = QUEUED_BLOCKS) -> None:
        self._blocks: queue.Queue = queue.Queue(size)

    def put(self, samples: np.ndarray, rate: int) -> None:
        block = Block(samples, time.time() - len(samples) / rate)
        while True:
            try:
                self._blocks.put_nowait(block)
                return
            except queue.Full:
                try:
                    self._blocks.get_nowait()
                except queue.Empty:
                    continue

    def get(self, timeout: float) -> Optional[Block]:
        try:
            return self._blocks.get(timeout=timeout)
        except queue.Empty:
            return None

    def empty(self) -> bool:
        return self._blocks.empty()
