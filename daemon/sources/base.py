"""The source interface and the conversion of native blocks to mono at the model's rate."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator, Optional, Union

import numpy as np

from ..records import Channel


class SourceError(RuntimeError):
    """Audio that cannot be opened or decoded; the message is one line naming the fix."""


class AudioSource(ABC):
    """Yields float32 blocks shaped ``[frames, channels]`` at the source's native rate."""

    name: str
    sample_rate: int
    channels: int

    @abstractmethod
    def blocks(self) -> Iterator[np.ndarray]:
        """Yield blocks until the source ends; a source that cannot go on raises SourceError."""

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


def check_channel(channel: Union[int, str], available: int, source: str) -> None:
    if channel != "mix" and int(channel) >= available:
        raise SourceError(
            f"{source} has {available} channel(s) but audio.channels is {channel}: "
            f"use 'mix' or an index below {available}"
        )
