"""At most a few network inputs starting at once.

A hundred ffmpeg processes started together on two cores each took seconds to connect and
probe their stream; 16 of 100 went past the 5 s watchdog before their first audio, were
killed and restarted, and each lost ~8 s as a gap. Through the gate, a source starts its
decoder only when a start slot is free, and holds the slot until its first audio arrives (or
the attempt ends); the watchdog's clock starts when the decoder starts, so time spent waiting
for a slot is never "no audio". Once running, sources take no slot: a reconnect waits only
behind other starts.
"""

from __future__ import annotations

import threading

START_SLOTS = 8
"""Inputs connecting at once. One ffmpeg start costs ~0.1 s of CPU here; eight at once keep
each well inside the watchdog on two loaded cores and still start 250 inputs in seconds."""
POLL_S = 0.25


class StartGate:
    """A counting semaphore whose waits end when the waiter's stop event is set."""

    def __init__(self, slots: int = START_SLOTS) -> None:
        self._slots = threading.BoundedSemaphore(slots)

    def enter(self, stop: threading.Event) -> bool:
        """Wait for a slot; False (and no slot) when ``stop`` was set first."""
        while not stop.is_set():
            if self._slots.acquire(timeout=POLL_S):
                return True
        return False

    def leave(self) -> None:
        self._slots.release()


class StartSlot:
    """One held slot, given back once only (on the first audio or when the attempt ends)."""

    def __init__(self, gate: StartGate) -> None:
        self._gate = gate
        self._held = True
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._held:
                self._held = False
                self._gate.leave()


PROCESS_GATE = StartGate()
"""Starting decoders is a cost of the whole process (its CPUs), so every network input of the
process shares one gate."""
