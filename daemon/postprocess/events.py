"""Per-class detection events of one stream: merge, split at a maximum length, hold down.

All positions are sample indices; an event's UTC times are its windows' stamps (the start of
its first window, the end of the window that ends it). State is kept only for the classes
that have been heard (a few per window among BirdNET's 6,522): a live box with hundreds of
streams keeps one tracker each, and arrays over every class cost 400 kB per stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Dict, List, Optional

import numpy as np

from birdd.daemon.records import Window

NEVER = -(2**62)
"""A sample position long before any stream starts."""


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
        self, merge: bool, max_event_samples: int, hold_down_samples: Optional[int]
    ) -> None:
        self._merge = merge
        self._max_event_samples = max_event_samples
        self._hold_down_samples = hold_down_samples
        self._open: Dict[int, _OpenEvent] = {}
        self._split_end: Dict[int, int] = {}
        self._reported_end: Dict[int, int] = {}

    def update(self, window: Window, classes: np.ndarray, confidences: np.ndarray) -> List[Event]:
        """Take in one window (its valid samples) and the classes it detects (ascending
        indices, with their confidences); return the events that closed."""
        start = window.start_sample
        detected = classes.tolist()
        heard = set(detected)
        finished = [
            index
            for index, event in self._open.items()
            if start > event.end or (index not in heard and start >= event.end)
        ]
        events = self._close(sorted(finished))
        self._extend(window, detected, confidences.tolist())
        if not self._merge:
            return events + self._close(detected)
        full = [
            index
            for index in detected
            if self._open[index].end - self._open[index].start >= self._max_event_samples
        ]
        for index in full:
            self._split_end[index] = self._open[index].end
        return events + self._close(full)

    def flush(self) -> List[Event]:
        """Close every open event (end of stream)."""
        return self._close(sorted(self._open))

    def _extend(self, window: Window, classes: List[int], confidences: List[float]) -> None:
        start = window.start_sample
        for index, confidence in zip(classes, confidences):
            event = self._open.get(index)
            if event is None:
                continues = start <= self._split_end.get(index, NEVER)
                event = _OpenEvent(start, start, window.start_utc, window.start_utc, continues)
                self._open[index] = event
            if event.end < window.end_sample:
                event.end = window.end_sample
                event.end_utc = window.end_utc
            event.confidence = max(event.confidence, confidence)
            event.windows += 1

    def _close(self, classes: List[int]) -> List[Event]:
        events = []
        for index in classes:
            event = self._open.pop(index)
            if self._held_down(index, event):
                continue
            self._reported_end[index] = event.end
            events.append(event.closed(index))
        return events

    def _held_down(self, index: int, event: _OpenEvent) -> bool:
        if self._hold_down_samples is None or event.continues:
            return False
        quiet_for = event.start - self._reported_end.get(index, NEVER)
        return quiet_for < self._hold_down_samples


@dataclass
class _OpenEvent:
    """One class's event while it can still grow."""

    start: int
    end: int
    start_utc: datetime
    end_utc: datetime
    continues: bool
    """It starts where an event split at the maximum length ended: never held down."""
    confidence: float = 0.0
    windows: int = 0

    def closed(self, class_index: int) -> Event:
        return Event(
            class_index=class_index,
            start=self.start,
            end=self.end,
            start_utc=self.start_utc,
            end_utc=self.end_utc,
            confidence=self.confidence,
            windows=self.windows,
        )
