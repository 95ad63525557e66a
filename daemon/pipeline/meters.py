"""Cheap health meters the pipeline updates as it runs and ``…/stats`` reports."""

from __future__ import annotations

import math
import threading
from collections import deque
from typing import Deque, Dict, Optional

import numpy as np

SILENCE = 1e-4
"""A block whose every sample is below this magnitude is digital silence (a dead input)."""
LEVEL_FLOOR_DBFS = -120.0


class LevelMeter:
    """Input level of the last block and how long the input has been digitally silent.

    Updated from the capture thread once per block: two reductions over the block, no copy.
    The level is ``20·log10(RMS)`` of full scale 1.0 (a full-scale sine reads −3 dBFS).
    """

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.level_dbfs: Optional[float] = None
        self._silent_samples = 0

    def update(self, block: np.ndarray) -> None:
        if len(block) == 0:
            return
        energy = float(np.dot(block, block)) / len(block)
        level = 10 * math.log10(energy) if energy > 0 else LEVEL_FLOOR_DBFS
        self.level_dbfs = max(LEVEL_FLOOR_DBFS, level)
        peak = max(float(block.max()), -float(block.min()))
        self._silent_samples = self._silent_samples + len(block) if peak < SILENCE else 0

    @property
    def silence_s(self) -> float:
        """Seconds of digital silence in a row, up to the last block."""
        return self._silent_samples / self.sample_rate


class RecentLatencies:
    """The last ``size`` latencies (seconds), added by one thread and summarised by another."""

    def __init__(self, size: int = 512) -> None:
        self._values: Deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._values.append(seconds)

    def percentiles_ms(self) -> Optional[Dict[str, float]]:
        """``{"p50": …, "p95": …}`` in milliseconds; None before the first value."""
        with self._lock:
            values = np.array(self._values, dtype=np.float64)
        if len(values) == 0:
            return None
        p50, p95 = np.percentile(values * 1000, [50, 95])
        return {"p50": round(float(p50), 2), "p95": round(float(p95), 2)}
