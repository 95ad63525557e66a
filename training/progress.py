"""A progress line on stderr: rewritten in place on a terminal, a line every few seconds in a
log (systemd, CI), so a long feature extraction or training run shows it is alive."""

from __future__ import annotations

import sys
import time
from typing import TextIO

LOG_EVERY_S = 10.0


class Progress:
    def __init__(self, label: str, total: int, stream: TextIO = sys.stderr) -> None:
        self.label = label
        self.total = max(total, 1)
        self.stream = stream
        self.count = 0
        self.began = time.monotonic()
        self._last = 0.0
        self._tty = stream.isatty()

    def step(self, note: str = "") -> None:
        self.count += 1
        now = time.monotonic()
        if self._tty or now - self._last >= LOG_EVERY_S or self.count == self.total:
            self._last = now
            self._write(note)

    def _write(self, note: str) -> None:
        elapsed = time.monotonic() - self.began
        line = f"{self.label}: {self.count}/{self.total} ({elapsed:.0f} s)"
        if note:
            line += " " + note
        if self._tty:
            self.stream.write("\r\x1b[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()
