"""Progress of an analyse job on stderr: a bar redrawn in place on a terminal, else one log
line per file (what a service log or ``nohup`` output wants)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Optional, TextIO

log = logging.getLogger("birdd")


class JobProgress:
    def __init__(
        self, files: int, audio_s: float, stream: TextIO = sys.stderr, quiet: bool = False
    ) -> None:
        self.files, self.audio_s = files, audio_s
        self.stream = stream
        self.bar = stream.isatty() and not quiet
        self.began = time.monotonic()
        self.done = 0
        self.failed = 0
        self.done_audio_s = 0.0

    @property
    def wall_s(self) -> float:
        return time.monotonic() - self.began

    @property
    def speed(self) -> float:
        """Audio seconds analysed per wall second so far."""
        wall = self.wall_s
        return self.done_audio_s / wall if wall > 0 else 0.0

    def file_done(self, path: str, audio_s: float, error: Optional[str]) -> None:
        self.done += 1
        self.failed += error is not None
        self.done_audio_s += audio_s
        if error is not None:
            self.finish()  # the warning on a line of its own, the bar redrawn below it
            log.warning("failed: %s", error if path in error else f"{path}: {error}")
        if self.bar:
            self.stream.write("\r" + self.render() + "\x1b[K")
            self.stream.flush()
        elif error is None:
            log.info("[%d/%d] %s: %.1f s of audio", self.done, self.files, path, audio_s)

    def render(self) -> str:
        fraction = self.done_audio_s / self.audio_s if self.audio_s else self.done / self.files
        fraction = min(1.0, fraction)
        bar = "#" * int(fraction * 20)
        return (
            f"[{bar:<20}] {self.done}/{self.files} files  "
            f"{self.done_audio_s / 3600:,.2f}/{self.audio_s / 3600:,.2f} h  "
            f"{self.speed:,.0f}x real time  ETA {self.eta()}"
        )

    def eta(self) -> str:
        speed = self.speed
        left = max(0.0, self.audio_s - self.done_audio_s)
        if speed <= 0:
            return "?"
        seconds = left / speed
        if seconds < 90:
            return f"{seconds:.0f} s"
        if seconds < 5400:
            return f"{seconds / 60:.0f} min"
        return f"{seconds / 3600:.1f} h"

    def finish(self) -> None:
        if self.bar:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
