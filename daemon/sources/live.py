"""Live inputs that can disappear and come back: the watchdog, the reconnects and the gaps.

A USB microphone is unplugged, PulseAudio restarts, an RTSP camera reboots or stalls: the
daemon must notice (the audio simply stops; PortAudio raises nothing, a stalled stream hangs),
say what it is waiting for, retry with capped exponential backoff, and carry on by itself. The
outage becomes a ``Gap`` on the first block after it, so the pipeline re-anchors its clock and
stores the gap.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Iterator, Optional, Tuple

from birdd.daemon.records import Gap
from birdd.daemon.retry import Backoff
from birdd.daemon.sources.base import AudioSource, Block, SourceError

log = logging.getLogger("birdd")

READ_TIMEOUT_S = 0.25
FIRST_RETRY_S = 0.5


class SourceUnavailable(SourceError):
    """A live input that is not there right now (device missing, server down): retried, or
    fatal at start with ``audio.require_device_at_start``."""


@dataclass(frozen=True)
class ReconnectPolicy:
    watchdog_s: float = 5.0
    """No audio for this long means the input is lost."""
    reconnect_max_s: float = 30.0
    """Longest wait between two attempts to reopen it."""
    require_at_start: bool = False
    """Refuse to start (SourceUnavailable) instead of waiting for a missing input."""


class Connection(ABC):
    """One opening of a live input."""

    @abstractmethod
    def read(self, timeout: float) -> Optional[Block]:
        """The next block, or None when nothing arrived within ``timeout`` seconds."""

    def lost(self) -> Optional[str]:
        """Why the connection is known to be dead (the stream stopped, the process exited)."""
        return None

    def close(self) -> None:
        """Release the stream or process; never raises."""


class LiveSource(AudioSource):
    """A source that reopens its input whenever it stops delivering audio."""

    paced = True

    def __init__(self, name: str, policy: ReconnectPolicy) -> None:
        self.name = name
        self.policy = policy
        self._stop = threading.Event()
        self._status = "starting"
        self._backoff = Backoff(FIRST_RETRY_S, policy.reconnect_max_s)
        self._outage: Optional[Gap] = None
        self._heard_at = self._active_at = time.monotonic()
        """When audio last arrived (or the input was reopened), and when the supervisor last
        did anything (a read came back, an attempt was made, a wait ended)."""

    @abstractmethod
    def connect(self) -> Connection:
        """Open the input; raise SourceUnavailable (one line: what is missing) when it is not
        there."""

    def describe(self) -> str:
        """What is being captured, for the status once connected."""
        return f"capturing {self.name}"

    def status(self) -> str:
        return self._status

    def stop(self) -> None:
        self._stop.set()

    def recovering(self) -> bool:
        """An outage is open (or the input has been silent for less than the watchdog, which
        is about to declare one), and the supervisor is still at it: it acted within one
        capped backoff wait plus the watchdog. A reconnect that hangs is not recovering."""
        now, policy = time.monotonic(), self.policy
        if now - self._active_at > policy.reconnect_max_s + policy.watchdog_s:
            return False
        return self._outage is not None or now - self._heard_at < policy.watchdog_s

    def open_gap(self) -> Optional[Gap]:
        """The outage going on now, if any, as a gap ending now (recorded at stop)."""
        if self._outage is None:
            return None
        return replace(self._outage, end=max(self._outage.start, time.time()))

    def blocks(self) -> Iterator[Block]:
        began = time.time()
        self._outage = Gap(self.name, began, began, "not there at start")
        connection, failed = self._open(began, fatal=self.policy.require_at_start)
        if connection is None:
            return
        if not failed:
            self._outage = None  # there at once: no gap
        audio_until, self._heard_at, delivered = began, time.monotonic(), False
        try:
            while not self._stop.is_set():
                block = connection.read(READ_TIMEOUT_S)
                self._active_at = time.monotonic()
                if block is not None:
                    if not delivered:
                        self._status = self.describe()
                        log.info("%s", self._status)
                    block, delivered = self._stamped(block), True
                    self._backoff.reset()
                    frames = len(block.samples)
                    audio_until = (block.captured_at or time.time()) + frames / self.sample_rate
                    self._heard_at = self._active_at
                    yield block
                    continue
                reason = connection.lost()
                if reason is None and self._active_at - self._heard_at >= self.policy.watchdog_s:
                    reason = f"no audio for {self.policy.watchdog_s:g} s"
                if reason is None:
                    continue
                connection.close()
                if delivered:
                    log.warning("%s lost: %s; reopening it", self.name, reason)
                self._outage = self._outage or Gap(self.name, audio_until, audio_until, reason)
                if not delivered:
                    self._back_off(reason, audio_until)
                connection, _ = self._open(audio_until)
                if connection is None:
                    return
                self._heard_at, delivered = time.monotonic(), False
        finally:
            if connection is not None:
                connection.close()

    def _stamped(self, block: Block) -> Block:
        """Close the outage on the first block after it: the gap ends where audio resumes."""
        if self._outage is None:
            return block
        end = block.captured_at or time.time()
        gap = replace(self._outage, end=max(self._outage.start, end))
        self._outage = None
        log.warning("%s is back after a gap of %.1f s (%s)", self.name, gap.seconds, gap.reason)
        return replace(block, after_gap=gap)

    def _open(self, since: float, fatal: bool = False) -> Tuple[Optional[Connection], bool]:
        """Connect, retrying with backoff until it works or the source is stopped; returns the
        connection (None when stopped) and whether any attempt failed."""
        failed = False
        while not self._stop.is_set():
            self._active_at = time.monotonic()
            try:
                connection = self.connect()
            except SourceUnavailable as exc:
                if fatal:
                    raise
                failed = True
                self._back_off(str(exc), since)
                continue
            self._status = f"opened {self.name}, waiting for audio"
            return connection, failed
        return None, failed

    def _back_off(self, reason: str, since: float) -> None:
        """Wait before the next attempt (capped exponential backoff with jitter); say why on
        the first failure and then once per wait at the cap, not on every retry."""
        waited = time.time() - since
        self._status = f"waiting for {self.name} ({waited:.0f} s so far): {reason}"
        self.problem = reason
        if self._backoff.failures == 0 or self._backoff.capped:
            log.warning("waiting for %s: %s", self.name, reason)
        self._stop.wait(self._backoff.next())
        self._active_at = time.monotonic()
