"""The arithmetic of clips: which samples a clip takes, how long the ring must keep them, what
the clip is called, and which windows around it the privacy guard has heard."""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from datetime import timedelta, timezone
from typing import Deque, Optional, Tuple

from birdd.daemon.records import Detection

QUEUED_WINDOWS = 32
"""Windows the pipeline may queue ahead of the engine (its window queue's size)."""


@dataclass(frozen=True)
class ClipSpan:
    """Stream samples ``[start, end)`` of a clip; ``event_start`` is where its event begins
    (``start`` is earlier by the pre-roll, or 0 when the stream began sooner). ``end`` may
    lie past the end of the stream: the clip is then cut short there."""

    start: int
    end: int
    event_start: int


def sample_index(offset_s: float, rate: int) -> int:
    """The stream sample at ``offset_s`` (detection offsets are sample indices / rate)."""
    return round(offset_s * rate)


def clip_span(detection: Detection, rate: int, pre_s: float, post_s: float) -> ClipSpan:
    """The event's samples with ``pre_s`` before and ``post_s`` after it."""
    start = sample_index(detection.offset_start, rate)
    end = sample_index(detection.offset_end, rate)
    return ClipSpan(max(0, start - round(pre_s * rate)), end + round(post_s * rate), start)


def ring_seconds_needed(
    pre_s: float, after_s: float, max_event_s: float, window_s: float, hop_s: float
) -> float:
    """Seconds of audio the capture ring must keep so that every clip is still there when it is
    cut: the pre-roll, the longest event (plus the window that closes it), the post-roll (or
    the privacy look-ahead, ``after_s``), and the windows queued ahead of the engine."""
    return pre_s + max_event_s + window_s + after_s + window_s + hop_s * (QUEUED_WINDOWS + 1)


def clip_name(detection: Detection, span: ClipSpan, rate: int, fmt: str) -> str:
    """``YYYY-MM-DD/YYYYMMDDTHHMMSS.mmmZ_<species>_<detection id>.<fmt>``, dated (UTC) by the
    clip's first sample; the species is its code, else its scientific name."""
    began = detection.start - timedelta(seconds=(span.event_start - span.start) / rate)
    began = began.astimezone(timezone.utc)
    stamp = began.strftime("%Y%m%dT%H%M%S.") + f"{began.microsecond // 1000:03d}Z"
    species = detection.species.code or detection.species.scientific
    species = re.sub(r"[^A-Za-z0-9]+", "-", species).strip("-") or "species"
    return f"{began:%Y-%m-%d}/{stamp}_{species}_{detection.id}.{fmt}"


class HeardLog:
    """The human-class level of each scored window of one stream, kept while a clip or a
    detection may still ask about the audio it covers."""

    def __init__(self) -> None:
        self._windows: Deque[Tuple[int, int, float]] = deque()

    def add(self, start: int, end: int, level: float) -> None:
        """One scored window: stream samples ``[start, end)`` and its human level."""
        self._windows.append((start, end, level))

    def loudest(self, start: int, end: int) -> Optional[float]:
        """The highest level among the windows that overlap ``[start, end)``; None if none."""
        levels = [level for lo, hi, level in self._windows if lo < end and hi > start]
        return max(levels) if levels else None

    def forget_before(self, sample: int) -> None:
        """Windows that end at or before ``sample`` are no longer asked about."""
        while self._windows and self._windows[0][1] <= sample:
            self._windows.popleft()

    def __len__(self) -> int:
        return len(self._windows)
