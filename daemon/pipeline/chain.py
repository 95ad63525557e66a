"""Wires the stages: sources → streams (ring buffers) → windowers → inference →
post-processing → sinks.

Per source one capture thread; per stream (one analysed channel of one source) one windower
thread; one inference thread shared by all, fed through one bounded queue; one thread per sink
inside the fan-out. One stop event ends them all. Stopping drains: the capture stops, the
windows already buffered are scored, open events are flushed and the sinks are closed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

from birdd.daemon.clips.stage import ClipSettings, ClipStage, build_clip_stage, ring_seconds
from birdd.daemon.clips.writer import ClipCounts
from birdd.daemon.pipeline.capture import SourceStage, Stream
from birdd.daemon.pipeline.clock import LiveClock
from birdd.daemon.pipeline.inference import END_OF_STREAM, InferenceStage, QueuedWindow
from birdd.daemon.pipeline.windower import hop_samples
from birdd.daemon.postprocess import PostProcessor
from birdd.daemon.postprocess.gate import GateCounts
from birdd.daemon.records import Channel, Clock, Detection, Gap, ScoredWindow, Window
from birdd.daemon.sinks.fanout import SinkFanout
from birdd.daemon.sources.base import AudioSource
from birdd.engines.base import Engine
from birdd.engines.errors import BatchFailed

log = logging.getLogger("birdd")

WINDOW_QUEUE_SIZE = 32
DEFAULT_SILENCE_WARN_S = 60.0


@dataclass
class PipelineSettings:
    channels: Sequence[Channel] = ("mix",)
    """The streams cut from every source: the downmix, one channel, or several separately."""
    overlap_s: float = 0.0
    ring_buffer_s: float = 120.0
    realtime_factor: Optional[float] = None
    """Pace a file source at this multiple of real time (simulate --realtime); None = flat out."""
    silence_warn_s: float = DEFAULT_SILENCE_WARN_S
    clips: Optional[ClipSettings] = None
    """Detection clips and the privacy guard (None: neither)."""


@dataclass
class PipelineStats:
    sample_rate: int
    samples: int = 0
    windows: int = 0
    windows_dropped: int = 0
    windows_unscored: int = 0
    """Windows the engine failed on and that were skipped (each recorded as a gap)."""
    detections: int = 0
    gate: Optional[GateCounts] = None
    """What the bird / no-bird gate did (None: no gate)."""
    clips: Optional[ClipCounts] = None
    """What became of the clips (None: no clip stage)."""
    engine_seconds: float = 0.0
    wall_seconds: float = 0.0
    gaps: List[Gap] = field(default_factory=list)

    @property
    def audio_seconds(self) -> float:
        return self.samples / self.sample_rate

    @property
    def realtime_factor(self) -> float:
        """Audio seconds processed per wall-clock second."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0


@dataclass(frozen=True)
class SourceSpec:
    """A source and the clock that dates its samples at the model's rate: a ``StreamClock``
    from the recording's start, or a ``LiveClock`` that the capture anchors to the audio
    clock."""

    source: AudioSource
    clock: Clock

    @property
    def live_clock(self) -> Optional[LiveClock]:
        """The clock for the capture to anchor; None when it needs no anchoring."""
        return self.clock if isinstance(self.clock, LiveClock) else None


class Pipeline:
    def __init__(
        self,
        sources: Sequence[SourceSpec],
        engine: Engine,
        postprocessor: PostProcessor,
        fanout: SinkFanout,
        settings: PipelineSettings,
    ) -> None:
        spec = engine.input_spec
        self.postprocessor = postprocessor
        self._replacement: Optional[PostProcessor] = None
        self._replacement_lock = threading.Lock()
        self.fanout = fanout
        self.stop_event = threading.Event()
        self.live = any(item.source.paced for item in sources)
        hop = hop_samples(spec.window_samples, spec.sample_rate, settings.overlap_s)
        ring_s = ring_seconds(
            settings.clips, settings.ring_buffer_s, spec.sample_rate, spec.window_samples, hop
        )
        self.stages = [
            SourceStage(
                item.source,
                [
                    Stream(
                        item.source,
                        channel,
                        item.clock,
                        spec.window_samples,
                        hop,
                        ring_s,
                    )
                    for channel in settings.channels
                ],
                item.live_clock,
                self._on_gap,
                settings.silence_warn_s,
                settings.realtime_factor,
            )
            for item in sources
        ]
        self.streams = [stream for stage in self.stages for stream in stage.streams]
        self.inference = InferenceStage(
            engine, self._on_scored, self._on_unscored, postprocessor.needs_embeddings
        )
        self.windows: queue.Queue = queue.Queue(WINDOW_QUEUE_SIZE)
        self._publish_lock = threading.Lock()
        self.clips: Optional[ClipStage] = build_clip_stage(
            settings.clips,
            engine.artifact,
            {(stream.source_name, stream.channel): stream.ring for stream in self.streams},
            spec.window_samples,
            self._publish,
            self.live,
        )
        self.stats = PipelineStats(
            spec.sample_rate,
            gate=postprocessor.gate_counts,
            clips=self.clips.counts if self.clips else None,
        )
        self._errors: List[BaseException] = []
        self._windowers_left = len(self.streams)
        self._windowers_lock = threading.Lock()

    def stop(self) -> None:
        """Ask the pipeline to finish early (signal handlers call this); it drains and flushes."""
        self.stop_event.set()
        for stage in self.stages:
            stage.source.stop()

    def replace_postprocessor(self, replacement: PostProcessor) -> None:
        """Hand the inference thread a post-processor to use from its next window on (a
        config reload); it takes over the open events of the one it replaces."""
        with self._replacement_lock:
            self._replacement = replacement

    def _take_replacement(self) -> None:
        with self._replacement_lock:
            replacement, self._replacement = self._replacement, None
        if replacement is not None:
            replacement.take_over(self.postprocessor)
            self.postprocessor = replacement

    def run(self, progress: Optional[Callable[[PipelineStats], None]] = None) -> PipelineStats:
        """Run to the end of the sources or until stopped; re-raise the first stage failure."""
        began = time.monotonic()
        targets: List[Any] = [
            (f"capture {stage.source.name}", stage.run, (self.stop_event,)) for stage in self.stages
        ]
        targets += [
            (f"windows {stream.source_name}:{stream.channel}", self._cut_windows, (stream,))
            for stream in self.streams
        ]
        targets.append(("inference", self._score, ()))
        if self.clips is not None and self.clips.writer is not None:
            targets.append(("clips", self.clips.writer.run, ()))
        threads = [
            threading.Thread(target=self._guard, args=(target, args), name=name, daemon=True)
            for name, target, args in targets
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
        """The pipeline's part of the ``…/stats`` message (read from any thread); ``gate``
        only with a bird / no-bird gate."""
        first = self.streams[0].level
        gate = {} if self.stats.gate is None else {"gate": asdict(self.stats.gate)}
        return {
            "audio_seconds": round(self.stats.audio_seconds, 3),
            "windows": self.stats.windows,
            "detections": self.stats.detections,
            "realtime_factor": round(self.stats.realtime_factor, 2),
            "inference_latency_ms": self.inference.latencies.percentiles_ms(),
            "queue_depths": {"windows": self.windows.qsize(), **self.fanout.queue_depths()},
            "dropped": {
                "windows": self.stats.windows_dropped,
                "windows_unscored": self.stats.windows_unscored,
                "overwritten_samples": sum(stream.ring.overwritten for stream in self.streams),
            },
            "input_level_dbfs": _rounded(first.level_dbfs),
            "silence_s": round(first.silence_s, 3),
            "sources": [self._source_health(stage) for stage in self.stages],
            "gaps": {
                "count": len(self.stats.gaps),
                "seconds": round(sum(gap.seconds for gap in self.stats.gaps), 3),
            },
            **gate,
            **(self.clips.stats() if self.clips else {}),
        }

    @staticmethod
    def _source_health(stage: SourceStage) -> Dict[str, Any]:
        return {
            "source": stage.source.name,
            "status": stage.source.status(),
            "channels": [
                {
                    "channel": stream.channel,
                    "input_level_dbfs": _rounded(stream.level.level_dbfs),
                    "silence_s": round(stream.level.silence_s, 3),
                }
                for stream in stage.streams
            ],
        }

    def _update(self, began: float) -> None:
        self.stats.samples = sum(stage.samples for stage in self.stages)
        self.stats.windows = self.inference.windows_scored
        self.stats.windows_unscored = self.inference.windows_failed
        self.stats.engine_seconds = self.inference.engine_seconds
        self.stats.wall_seconds = time.monotonic() - began

    def _guard(self, target: Callable[..., None], args: Sequence[Any]) -> None:
        try:
            target(*args)
        except BaseException as exc:
            self._errors.append(exc)
            self.stop_event.set()
            for stage in self.stages:
                stage.stop()
            self._put(END_OF_STREAM)

    def _on_gap(self, gap: Gap) -> None:
        self.stats.gaps.append(gap)
        self.fanout.record_gap(gap)

    def _cut_windows(self, stream: Stream) -> None:
        for window in stream.windower.windows():
            self._put(QueuedWindow(window, time.monotonic()))
        with self._windowers_lock:
            self._windowers_left -= 1
            last = self._windowers_left == 0
        if last:
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
                if self.live or self._errors:
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
        try:
            self.inference.run(self.windows)
            self._take_replacement()
            flushed = self.postprocessor.flush()
            if self.clips is not None:
                self.clips.flush(flushed)
            else:
                self._publish(flushed)
        finally:
            if self.clips is not None:
                self.clips.close()

    def _on_scored(self, scored: List[ScoredWindow]) -> None:
        detections = []
        self._take_replacement()
        for item in scored:
            closed = self.postprocessor.process(item)
            if self.clips is not None:
                self.clips.process(item, closed)
            else:
                detections.extend(closed)
        self._publish(detections)

    def _on_unscored(self, windows: List[Window], failure: BatchFailed) -> None:
        """Record the audio of a batch the engine failed on as a gap of each source in it."""
        for source in sorted({window.source for window in windows}):
            own = [window for window in windows if window.source == source]
            first = min(own, key=lambda window: window.start_sample)
            last = max(own, key=lambda window: window.end_sample)
            gap = Gap(
                source,
                first.start_utc.timestamp(),
                last.end_utc.timestamp(),
                f"engine failed: {failure}",
            )
            log.warning(
                "%s: skipped %d window(s), %.1f s of audio, that the engine could not score: %s",
                source,
                len(own),
                gap.seconds,
                failure,
            )
            self._on_gap(gap)

    def _publish(self, detections: Sequence[Detection]) -> None:
        """To the sinks: from the inference thread, and from the clip writer's."""
        if detections:
            with self._publish_lock:
                self.stats.detections += len(detections)
            self.fanout.publish(detections)


def _rounded(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 2)
