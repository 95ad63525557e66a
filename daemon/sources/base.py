"""The source interface and the conversion of native blocks to mono at the model's rate."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterator, List, Optional, Union

import numpy as np

from birdd.daemon.records import Channel, Gap


class SourceError(RuntimeError):
    """Audio that cannot be opened or decoded; the message is one line naming the fix."""


@dataclass(frozen=True)
class Block:
    """Audio as a source delivers it: float32 ``[frames, channels]`` at its native rate."""

    samples: np.ndarray
    captured_at: Optional[float] = None
    """UTC epoch seconds of the first frame by the audio clock; None for recordings."""
    after_gap: Optional[Gap] = None
    """Set on the first block after an outage (the stream's time jumps here)."""


class AudioSource(ABC):
    """Yields blocks at the source's native rate until it ends or is stopped."""

    name: str
    sample_rate: int
    channels: int
    paced = False
    """True when the audio arrives in real time and cannot wait (a microphone, a stream): the
    pipeline then overwrites the oldest audio rather than hold the source back."""
    problem: Optional[str] = None
    """Why the source last failed to deliver audio (a live input it waits for), else None."""

    @abstractmethod
    def blocks(self) -> Iterator[Block]:
        """Yield blocks until the source ends; a source that cannot go on raises SourceError."""

    def stop(self) -> None:
        """Ask ``blocks`` to return soon (from another thread); a file source just ends."""

    def open_gap(self) -> Optional[Gap]:
        """An outage still going on when the source stops (live sources), else None."""
        return None

    def status(self) -> str:
        """What the source is doing, in words, for logs and ``…/stats``."""
        return "reading"

    def close(self) -> None:
        """Release the device, file or process."""


def select_channel(block: np.ndarray, channel: Channel) -> np.ndarray:
    """Pick one channel or average them all ('mix'); returns a 1-D float32 view or copy."""
    if channel == "mix":
        return block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)
    return block[:, int(channel)]


class Resampler:
    """Streaming resampler to the model rate (soxr keeps its filter state across blocks)."""

    def __init__(self, source_rate: int, target_rate: int) -> None:
        self._stream: Optional[object] = None
        if source_rate != target_rate:
            import soxr

            self._stream = soxr.ResampleStream(source_rate, target_rate, 1, dtype="float32")

    def __call__(self, mono: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return np.ascontiguousarray(mono, dtype=np.float32)
        return self._stream.resample_chunk(np.ascontiguousarray(mono, np.float32), last=last)


def check_channel(channel: Union[int, str, List[int]], available: int, source: str) -> None:
    """Refuse a channel index the source does not have (``channel`` may be a list)."""
    indices = channel if isinstance(channel, list) else [] if channel == "mix" else [channel]
    if indices and max(int(index) for index in indices) >= available:
        raise SourceError(
            f"{source} has {available} channel(s) but audio.channels is {channel}: "
            f"use 'mix' or indices below {available}"
        )
