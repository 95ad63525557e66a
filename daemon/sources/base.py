"""The source interface and the conversion of native blocks to mono at the model's rate."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Union

import numpy as np

from birdd.daemon.records import Channel, Gap

log = logging.getLogger(__name__)


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

    def recovering(self) -> bool:
        """True while the source's own supervisor is handling an outage (a live input lost and
        being reopened): silence then is not a stalled pipeline. Sources without one: never."""
        return False

    def close(self) -> None:
        """Release the device, file or process."""


def select_channel(block: np.ndarray, channel: Channel) -> np.ndarray:
    """Pick one channel or average them all ('mix'); returns a 1-D float32 view or copy."""
    if channel == "mix":
        return block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)
    return block[:, int(channel)]


class NonFiniteSamples:
    """Sets NaN and infinite samples (a damaged float file, a broken converter) to 0, which the
    model hears as silence, counts them and warns once: a NaN would otherwise make its
    window's scores NaN and the window's detections vanish without a word."""

    def __init__(self, source: str, sample_rate: int) -> None:
        self.source, self.sample_rate = source, sample_rate
        self.count = 0
        self.first_s: Optional[float] = None
        self._frames = 0

    def clean(self, samples: np.ndarray) -> np.ndarray:
        """``samples`` ([frames, channels]) with every non-finite value set to 0."""
        finite = np.isfinite(samples)
        if not finite.all():
            if self.first_s is None:
                first = int(np.argmin(finite.all(axis=1)))
                self.first_s = (self._frames + first) / self.sample_rate
            self.count += int(finite.size - np.count_nonzero(finite))
            samples = np.where(finite, samples, np.float32(0))
        self._frames += len(samples)
        return samples

    def report(self) -> None:
        """The one warning, with the count, once the source has ended (none if all was well)."""
        if self.count:
            log.warning(
                "%s: %d NaN or infinite sample(s), the first at %.3f s, read as silence "
                "(a damaged file or a broken converter)",
                self.source,
                self.count,
                self.first_s,
            )


class Resampler:
    """Streaming resampler to the model rate (soxr keeps its filter state across blocks), of
    mono samples or of ``[frames, channels]``."""

    def __init__(self, source_rate: int, target_rate: int, channels: int = 1) -> None:
        self._stream: Optional[Any] = None  # soxr.ResampleStream, imported only when needed
        if source_rate != target_rate:
            import soxr

            self._stream = soxr.ResampleStream(source_rate, target_rate, channels, "float32")

    def __call__(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return np.ascontiguousarray(samples, dtype=np.float32)
        return self._stream.resample_chunk(np.ascontiguousarray(samples, np.float32), last=last)


def check_channel(channel: Union[int, str, List[int]], available: int, source: str) -> None:
    """Refuse a channel index the source does not have (``channel`` may be a list)."""
    indices = channel if isinstance(channel, list) else [] if channel == "mix" else [channel]
    if indices and max(int(index) for index in indices) >= available:
        raise SourceError(
            f"{source} has {available} channel(s) but audio.channels is {channel}: "
            f"use 'mix' or indices below {available}"
        )
