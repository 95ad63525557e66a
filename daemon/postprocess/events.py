"""Per-class detection events of one stream: merge, split at a maximum length, hold down.

All positions are sample indices; an event's UTC times are its windows' stamps (the start of
its first window, the end of the window that ends it). State lives in numpy arrays over every
class, so a window costs a few vector operations plus Python work only for the classes that
change state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import List, Optional

import numpy as np

from birdd.daemon.records import Window

NEVER = np.iinfo(np.int64).min // 2
"""A sample position long before any stream starts (halved so that differences cannot overflow)."""


@dataclass(frozen=True)
class Event:
    """One class heard over samples ``[start, end)`` (``start_utc`` to ``end_utc``): its best
    confidence and window count."""

    class_index: int
    start: int
    end: int
    start_utc: datetime
    end_utc: datetime
    confidence: float
    windows: int


class EventTracker:
    """Turns the classes detected in each window of one stream into closed events.

    An open event takes in every detecting window that starts at or before its end
    (consecutive or overlapping windows). It closes when a window that starts at or after its
    end does not detect the class, when a detecting window leaves a gap, when it reaches
    ``max_event_samples`` (the next detecting window then continues it as a new event), or at
    ``flush``. Without ``merge`` every detecting window is an event of its own.

    With ``hold_down_samples`` set, a closed event that starts less than that many samples
    after the end of the class's last *reported* event is dropped, unless it continues an
    event split at the maximum length: hold-down silences a flickering call, not a bird that
    keeps singing.
    """

    def __init__(
        self,
        num_classes: int,
        merge: bool,
        max_event_samples: int,
        hold_down_samples: Optional[int],
    ) -> None:
        self._merge = merge
        self._max_event_samples = max_event_samples
        self._hold_down_samples = hold_down_samples
        self._open = np.zeros(num_classes, dtype=bool)
        self._start = np.zeros(num_classes, dtype=np.int64)
        self._end = np.zeros(num_classes, dtype=np.int64)
        self._start_utc = np.empty(num_classes, dtype=object)
        self._end_utc = np.empty(num_classes, dtype=object)
        self._confidence = np.zeros(num_classes, dtype=np.float32)
        self._windows = np.zeros(num_classes, dtype=np.int64)
        self._continues = np.zeros(num_classes, dtype=bool)
        self._split_end = np.full(num_classes, NEVER, dtype=np.int64)
        self._reported_end = np.full(num_classes, NEVER, dtype=np.int64)

    def update(self, window: Window, classes: np.ndarray, confidences: np.ndarray) -> List[Event]:
        """Take in one window (its valid samples) and the classes it detects (ascending
        indices, with their confidences); return the events that closed."""
        start = window.start_sample
        detected = np.zeros_like(self._open)
        detected[classes] = True
        finished = self._open & ((start > self._end) | (~detected & (start >= self._end)))
        events = self._close(np.flatnonzero(finished))
        self._extend(window, classes, confidences)
        if not self._merge:
            return events + self._close(classes)
        full = classes[self._end[classes] - self._start[classes] >= self._max_event_samples]
        self._split_end[full] = self._end[full]
        return events + self._close(full)

    def flush(self) -> List[Event]:
        """Close every open event (end of stream)."""
        return self._close(np.flatnonzero(self._open))

    def _extend(self, window: Window, classes: np.ndarray, confidences: np.ndarray) -> None:
        start = window.start_sample
        new = classes[~self._open[classes]]
        self._open[new] = True
        self._start[new] = start
        self._start_utc[new] = window.start_utc
        self._end[new] = start
        self._confidence[new] = 0.0
        self._windows[new] = 0
        self._continues[new] = start <= self._split_end[new]
        longer = classes[self._end[classes] < window.end_sample]
        self._end[longer] = window.end_sample
        self._end_utc[longer] = window.end_utc
        self._confidence[classes] = np.maximum(self._confidence[classes], confidences)
        self._windows[classes] += 1

    def _close(self, classes: np.ndarray) -> List[Event]:
        self._open[classes] = False
        reported = classes
        if self._hold_down_samples is not None:
            quiet_for = self._start[classes] - self._reported_end[classes]
            reported = classes[self._continues[classes] | (quiet_for >= self._hold_down_samples)]
        self._reported_end[reported] = self._end[reported]
        return [
            Event(
                class_index=int(index),
                start=int(self._start[index]),
                end=int(self._end[index]),
                start_utc=self._start_utc[index],
                end_utc=self._end_utc[index],
                confidence=float(self._confidence[index]),
                windows=int(self._windows[index]),
            )
            for index in reported
        ]
