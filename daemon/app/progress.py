"""The progress line on stderr: audio seconds processed and the real-time factor."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

from birdd.daemon.pipeline.chain import PipelineStats


class ProgressLine:
    """Redraws one status line at most twice a second, only when stderr is a terminal."""

    def __init__(self, total_s: Optional[float], stream: TextIO = sys.stderr) -> None:
        self.total_s = total_s
        self.stream = stream
        self.enabled = stream.isatty()
        self._last = 0.0

    def __call__(self, stats: PipelineStats) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < 0.5:
            return
        self._last = now
        self.stream.write("\r" + self.render(stats) + "\x1b[K")
        self.stream.flush()

    def render(self, stats: PipelineStats) -> str:
        done = stats.audio_seconds
        if self.total_s:
            fraction = min(1.0, done / self.total_s)
            bar = "#" * int(fraction * 20)
            head = f"[{bar:<20}] {done:,.0f}/{self.total_s:,.0f} s"
        else:
            head = f"{done:,.0f} s"
        return f"{head}  {stats.realtime_factor:,.1f}x real time  {stats.detections} detections"

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
