"""SIGINT and SIGTERM ask the current phase to stop cleanly instead of killing the process;
SIGHUP, during a live run, asks for the config to be read again."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Callable, Dict, Optional

log = logging.getLogger("birdd")


class StopOnSignals:
    """While active, SIGINT/SIGTERM log ``reason`` and call ``action``; both may be changed as
    the program moves on (first stop the audio, then cut the MQTT drain short)."""

    def __init__(self, action: Callable[[], None], reason: str) -> None:
        self.action, self.reason = action, reason
        self.received: Optional[signal.Signals] = None
        """The first signal that asked to stop, if one did."""
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        received = signal.Signals(signum)
        self.received = self.received or received
        log.warning("%s: %s", received.name, self.reason)
        self.action()

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class OnSignal:
    """While active, ``signum`` calls ``action`` (SIGHUP: reload the config) instead of its
    default, which for SIGHUP ends the process."""

    def __init__(self, signum: signal.Signals, action: Callable[[int, Any], None]) -> None:
        self.signum, self.action = signum, action
        self._previous: Any = None

    def __enter__(self) -> OnSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(self.signum, self.action)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
