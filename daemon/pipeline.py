"""Wires the stages: source → ring buffer → windower → inference → post-processing → sinks.

Three threads joined by a ring buffer and one bounded queue, plus one thread per sink inside
the fan-out; one stop event ends them all. Stopping drains: the capture stops, the windows
already buffered are scored, open events are flushed and the sinks are closed.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from birdd.engines.base import Engine

from .inference import END_OF_STREAM, InferenceStage, QueuedWindow
from .meters import LevelMeter
from .postprocess import PostProcessor
from .records import Channel, ScoredWindow
from .ring import RingBuffer
from .sinks.fanout import SinkFanout
from .sources.base import AudioSource, Resampler, select_channel
from .windower import Windower, hop_samples

WINDOW_QUEUE_SIZE = 32


@dataclass
class PipelineSettings:
    channel: Channel = "mix"
    overlap_s: float = 0.0
    ring_buffer_s: float = 120.0
    live: bool = False
    realtime_factor: Optional[float] = None
    """Pace a file source at this multiple of real time (simulate --realtime); None = flat out."""


@dataclass
class PipelineStats:
    sample_rate: int
    samples: int = 0
    windows: int = 0
    windows_dropped: int = 0
    detections: int = 0
    engine_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def audio_seconds(self) -> float:
        return self.samples / self.sample_rate

    @property
    def realtime_factor(self) -> float:
        """Audio seconds processed per wall-clock second."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0


class Pipeline:
    def __init__(
        self,
        source: AudioSource,
        engine: Engine,
        postprocessor: PostProcessor,
        fanout: SinkFanout,
        settings: PipelineSettings,
    ) -> None:
        spec = engine.input_spec
        self.source = source
        self.postprocessor = postprocessor
        self.fanout = fanout
        self.settings = settings
        self.stop_event = threading.Event()
        self.ring = RingBuffer(int(settings.ring_buffer_s * spec.sample_rate), settings.live)
        hop = hop_samples(spec.window_samples, spec.sample_rate, settings.overlap_s)
        self.windower = Windower(
            self.ring, spec.window_samples, hop, spec.sample_rate, source.name, settings.channel
        )
        self.inference = InferenceStage(engine, self._on_scored)
        self.windows: queue.Queue = queue.Queue(WINDOW_QUEUE_SIZE)
        self.stats = PipelineStats(spec.sample_rate)
        self.level = LevelMeter(source.sample_rate)
        self._resampler = Resampler(source.sample_rate, spec.sample_rate)
        self._errors: List[BaseException] = []

    def stop(self) -> None:
        """Ask the pipeline to finish early (signal handlers call this); it drains and flushes."""
        self.stop_event.set()

    def run(self, progress: Optional[Callable[[PipelineStats], None]] = None) -> PipelineStats:
        """Run to the end of the source or until stopped; re-raise the first stage failure."""
        began = time.monotonic()
        threads = [
            threading.Thread(target=self._guard, args=(target,), name=name, daemon=True)
            for name, target in (
                ("capture", self._capture),
                ("windower", self._cut_windows),
                ("inference", self._score),
            )
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.25)
                self._update(began)
                if progress:
                    progress(self.stats)
        self._update(began)
        if self._errors:
            raise self._errors[0]
        return self.stats

    def health(self) -> Dict[str, Any]:
        """The pipeline's part of the ``…/stats`` message (read from any thread)."""
        return {
            "audio_seconds": round(self.stats.audio_seconds, 3),
            "realtime_factor": round(self.stats.realtime_factor, 2),
            "inference_latency_ms": self.inference.latencies.percentiles_ms(),
            "queue_depths": {"windows": self.windows.qsize(), **self.fanout.queue_depths()},
            "dropped": {
                "windows": self.stats.windows_dropped,
                "overwritten_samples": self.ring.overwritten,
            },
            "input_level_dbfs": _rounded(self.level.level_dbfs),
            "silence_s": round(self.level.silence_s, 3),
        }

    def _update(self, began: float) -> None:
        self.stats.samples = self.ring.written
        self.stats.windows = self.inference.windows_scored
        self.stats.engine_seconds = self.inference.engine_seconds
        self.stats.wall_seconds = time.monotonic() - began

    def _guard(self, target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:
            self._errors.append(exc)
            self.stop_event.set()
            self.ring.close()
            self._put(END_OF_STREAM)

    def _capture(self) -> None:
        began = time.monotonic()
        try:
            for block in self.source.blocks():
                if self.stop_event.is_set():
                    break
                mono = select_channel(block, self.settings.channel)
                self.level.update(mono)
                self.ring.write(self._resampler(mono))
                self._pace(began)
            if not self.stop_event.is_set():
                self.ring.write(self._resampler(np.zeros(0, np.float32), last=True))
        finally:
            self.ring.close()

    def _pace(self, began: float) -> None:
        factor = self.settings.realtime_factor
        if factor:
            ahead = self.ring.written / self.stats.sample_rate / factor
            delay = ahead - (time.monotonic() - began)
            if delay > 0:
                self.stop_event.wait(delay)

    def _cut_windows(self) -> None:
        for window in self.windower.windows():
            self._put(QueuedWindow(window, time.monotonic()))
        self._put(END_OF_STREAM)

    def _put(self, item: Optional[QueuedWindow]) -> None:
        """Queue a window: wait in simulate mode; in live mode drop the oldest and count it."""
        while True:
            try:
                self.windows.put(item, timeout=0.2)
                return
            except queue.Full:
                if self._errors and item is not END_OF_STREAM:
                    return
                if self.settings.live or self._errors:
                    self._drop_oldest()

    def _drop_oldest(self) -> None:
        try:
            dropped = self.windows.get_nowait()
        except queue.Empty:
            return
        if dropped is END_OF_STREAM:
            self.windows.put(END_OF_STREAM)
        else:
            self.stats.windows_dropped += 1

    def _score(self) -> None:
        self.inference.run(self.windows)
        self._publish(self.postprocessor.flush())

    def _on_scored(self, scored: List[ScoredWindow]) -> None:
        detections = []
        for item in scored:
            detections.extend(self.postprocessor.process(item))
        self._publish(detections)

    def _publish(self, detections: list) -> None:
        if detections:
            self.stats.detections += len(detections)
            self.fanout.publish(detections)


def _rounded(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 2)
