"""The one definition of "the live pipeline is alive", shared by the systemd watchdog (which
pings only while it holds) and ``/healthz`` (200 while it holds, 503 otherwise).

It holds while

* every input delivered audio within the last ``stall_s`` seconds, or is *recovering*: a live
  input (microphone, network stream) that its own supervisor has declared lost and is
  reopening with backoff. That outage is recorded as a gap and a restart would not bring the
  microphone or the camera back, so it does not stop the watchdog. stdin has no supervisor:
  a pipe that stops delivering without closing is a stall;
* the inference thread has not been busy with one batch (engine call, post-processing,
  handing detections to the sinks) for longer than ``stall_s``.

A capture thread wedged in a driver call, a supervisor stuck in a reconnect, an engine or a
sink that hangs: each stops the watchdog's pings, and systemd restarts the daemon. A stage
that fails outright ends the run by itself (exit 1). The checks read counters the pipeline
keeps anyway: a few attribute reads, four times a second.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Tuple

from birdd.daemon.pipeline.chain import Pipeline

DEFAULT_STALL_S = 30.0
"""Without a systemd watchdog (``/healthz`` only): half the unit's ``WatchdogSec=60``."""


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    problems: List[str] = field(default_factory=list)
    """One line per stalled part; empty when healthy."""

    def as_json(self) -> Dict[str, Any]:
        return {"status": "ok" if self.healthy else "stalled", "problems": self.problems}


class Liveness:
    """Judges a running ``Pipeline``; ``check`` may be called from any thread."""

    def __init__(
        self,
        pipeline: Pipeline,
        stall_s: float = DEFAULT_STALL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pipeline, self.stall_s, self._clock = pipeline, stall_s, clock
        began = clock()
        self._audio: List[Tuple[int, float]] = [(-1, began) for _ in pipeline.stages]
        """Per input: its sample count when last seen, and since when it has had that count."""
        self._lock = threading.Lock()

    def check(self) -> Verdict:
        with self._lock:
            now = self._clock()
            problems = self._stalled_inputs(now)
        busy_since = self.pipeline.inference.busy_since
        if busy_since is not None and now - busy_since > self.stall_s:
            problems.append(f"inference: busy with one batch for {now - busy_since:.0f} s")
        return Verdict(not problems, problems)

    def _stalled_inputs(self, now: float) -> List[str]:
        problems = []
        for index, stage in enumerate(self.pipeline.stages):
            samples = stage.samples
            seen, since = self._audio[index]
            if samples != seen and seen >= 0:
                since = now
            self._audio[index] = (samples, since)
            quiet_s = now - since
            if quiet_s > self.stall_s and not stage.source.recovering():
                problems.append(f"{stage.source.name}: no audio for {quiet_s:.0f} s")
        return problems
