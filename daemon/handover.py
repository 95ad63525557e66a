"""A value one thread hands to another, taken at the receiver's next safe point.

A config reload builds new settings on the main thread while the inference thread is in the
middle of a window: it hands them over here and the inference thread takes them between
windows, so that a window is never processed half with the old and half with the new.
"""

from __future__ import annotations

import threading
from typing import Generic, Optional, TypeVar

T = TypeVar("T")


class Handover(Generic[T]):
    """One slot: the latest value given wins; ``take`` empties it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value: Optional[T] = None

    def give(self, value: T) -> None:
        with self._lock:
            self._value = value

    def take(self) -> Optional[T]:
        with self._lock:
            value, self._value = self._value, None
        return value
