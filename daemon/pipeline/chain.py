"""Wires the stages: sources → streams (ring buffers) → windowers → inference →
post-processing → sinks.

Per source one capture thread; per stream (one analysed channel of one source) one windower
thread; one inference thread shared by all, fed through one bounded queue; one thread per sink
inside the fan-out. One stop event ends them all. Stopping drains: the capture stops, the
windows already buffered are scored, open events are flushed and the sinks are closed.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from birdd.daemon.clips.stage import ClipStage, build_clip_stage, ring_seconds
from birdd.daemon.handover import Handover
from birdd.daemon.pipeline.capture import SourceStage, Stream
from birdd.daemon.pipeline.health import pipeline_health
from birdd.daemon.pipeline.inference import (
    END_OF_STREAM,
    InferenceStage,
    Queued,
    QueuedWindow,
    StreamEnd,
)
from birdd.daemon.pipeline.specs import (
    PipelineSettings,
    PipelineStats,
    SourceSpec,
)
from birdd.daemon.pipeline.windower import hop_samples
from birdd.daemon.pipeline.windowqueue import WindowQueue
from birdd.daemon.postprocess import PostProcessor
from birdd.daemon.records import Detection, Gap, ScoredWindow, Window
from birdd.daemon.sinks.fanout import SinkFanout
from birdd.daemon.sources.base import AudioSource
from birdd.engines.base import Engine
from birdd.engines.errors import BatchFailed

__all__ = ["Pipeline", "PipelineSettings", "PipelineStats", "SourceSpec"]

log = logging.getLogger("birdd")


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
        self._replacement: Handover[PostProcessor] = Handover()
        self.fanout = fanout
        self.stop_event = threading.Event()
        self.live = any(item.source.paced for item in sources)
        hop = hop_samples(spec.window_samples, spec.sample_rate, settings.overlap_s)
        ring_s = ring_seconds(
            settings.clips, settings.ring_buffer_s, spec.sample_rate, spec.window_samples, hop
        )
        self.stream_shape = (spec.window_samples, hop, ring_s)
        """Per stream: the window and the hop in samples, the ring buffer in seconds."""
        self._settings = settings
        self.stages = [self._stage(item) for item in sources]
        self.inference = InferenceStage(
            engine,
            self._on_scored,
            self._on_unscored,
            postprocessor.needs_embeddings,
            self._on_stream_end,
        )
        self.windows = WindowQueue(self.live, hop / spec.sample_rate, self._count_dropped)
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
        self.reporters: List[Callable[[], Dict[str, Any]]] = []
        """Other parts of the run whose figures join the pipeline's in ``health`` (the clip
        uploader): the stats message and the metrics endpoint both read ``health``."""
        self._errors: List[BaseException] = []
        self._windowers_left = len(self.streams)
        self._windowers_lock = threading.Lock()
        self._threads: List[threading.Thread] = []
        self._threads_lock = threading.Lock()
        """Guards the thread list and the inputs being added and removed (a reload)."""
        self._retiring: Dict[str, SourceStage] = {}
        """Inputs removed whose last windows are not all scored yet, by name."""
        self._waiting: List[SourceStage] = []
        """Inputs added while one of their name was still being removed."""
        self._stage_threads: Dict[str, List[threading.Thread]] = {}
        self._ended: Dict[str, int] = {}
        """Per input, how many of its streams' ends are handled: by the inference thread for
        an input being removed, by the windower for one that ended by itself (stdin)."""
        self._retired_samples = 0

    @property
    def streams(self) -> List[Stream]:
        """The running inputs' streams (``stages`` is replaced whole, never changed in place,
        so this is consistent from any thread)."""
        return [stream for stage in self.stages for stream in stage.streams]

    def stop(self) -> None:
        """Ask the pipeline to finish early; it drains and flushes. Signal handlers call this
        on the main thread, which may hold ``_threads_lock`` in ``run`` at that moment: so it
        takes no lock (``run`` drops the inputs still waiting to start)."""
        self.stop_event.set()
        for stage in self.stages:
            stage.source.stop()

    def _drop_waiting(self) -> None:
        """Once stopped, the inputs waiting to start never will: their windowers will not
        count down."""
        with self._threads_lock:
            waiting, self._waiting = self._waiting, []
        for stage in waiting:
            self._windowers_done(len(stage.streams))

    def replace_postprocessor(self, replacement: PostProcessor) -> None:
        """Hand the inference thread a post-processor to use from its next window on (a
        config reload); it takes over the open events of the one it replaces."""
        self._replacement.give(replacement)

    def _take_replacement(self) -> None:
        replacement = self._replacement.take()
        if replacement is not None:
            replacement.take_over(self.postprocessor)
            self.postprocessor = replacement

    def run(self, progress: Optional[Callable[[PipelineStats], None]] = None) -> PipelineStats:
        """Run to the end of the sources or until stopped; re-raise the first stage failure."""
        began = time.monotonic()
        for stage in self.stages:
            self._start(stage)
        self._spawn("inference", self._score, ())
        if self.clips is not None and self.clips.writer is not None:
            self._spawn("clips", self.clips.writer.run, ())
        while True:
            with self._threads_lock:
                alive = [thread for thread in self._threads if thread.is_alive()]
            if not alive:
                break
            alive[0].join(0.25)
            if self.stop_event.is_set():
                self._drop_waiting()
            self._retire()
            self._update(began)
            if progress:
                progress(self.stats)
        self._update(began)
        if self._errors:
            raise self._errors[0]
        return self.stats

    def add_source(self, item: SourceSpec) -> None:
        """Start an input while the others run (a config reload). One of the same name that
        is still being removed finishes first: this one starts once its last window is
        scored."""
        stage = self._stage(item)
        self.live = self.live or item.source.paced
        with self._windowers_lock:
            self._windowers_left += len(stage.streams)
        with self._threads_lock:
            if stage.source.name in self._retiring:
                self._waiting.append(stage)
                return
        self._start(stage)

    def remove_source(self, name: str) -> None:
        """Stop one input while the others run (a config reload): what it already captured
        is cut into windows, scored and stored; then its source is closed."""
        with self._threads_lock:
            stage = next(stage for stage in self.stages if stage.source.name == name)
            self.stages = [other for other in self.stages if other is not stage]
            self._retiring[name] = stage
        stage.source.stop()

    def _stage(self, item: SourceSpec) -> SourceStage:
        window, hop, ring_s = self.stream_shape
        settings = self._settings
        streams = [
            Stream(item.source, channel, item.clock, window, hop, ring_s)
            for channel in settings.channels
        ]
        return SourceStage(
            item.source,
            streams,
            item.live_clock,
            self._on_gap,
            settings.silence_warn_s,
            settings.realtime_factor,
        )

    def _start(self, stage: SourceStage) -> None:
        """Start one input's capture and windower threads (at the start, or added later)."""
        with self._threads_lock:
            if stage not in self.stages:
                self.stages = [*self.stages, stage]
                if self.clips is not None:
                    for stream in stage.streams:
                        self.clips.add_stream((stream.source_name, stream.channel), stream.ring)
            self._ended[stage.source.name] = 0
        threads = [self._spawn(f"capture {stage.source.name}", stage.run, (self.stop_event,))]
        threads += [
            self._spawn(
                f"windows {stream.source_name}:{stream.channel}", self._cut_windows, (stream,)
            )
            for stream in stage.streams
        ]
        self._stage_threads[stage.source.name] = threads

    def _spawn(
        self, name: str, target: Callable[..., None], args: Sequence[Any]
    ) -> threading.Thread:
        thread = threading.Thread(target=self._guard, args=(target, args), name=name, daemon=True)
        with self._threads_lock:
            self._threads.append(thread)
        thread.start()
        return thread

    def _retire(self) -> None:
        """Close the removed inputs whose last windows are scored, and start what waited for
        them (a restarted input of the same name)."""
        with self._threads_lock:
            done = [
                stage
                for name, stage in self._retiring.items()
                if self._ended.get(name, 0) >= len(stage.streams)
                and not any(thread.is_alive() for thread in self._stage_threads[name])
            ]
            for stage in done:
                name = stage.source.name
                del self._retiring[name], self._stage_threads[name], self._ended[name]
                self._retired_samples += stage.samples
            self._threads = [thread for thread in self._threads if thread.is_alive()]
            names = {stage.source.name for stage in done}
            starting = [stage for stage in self._waiting if stage.source.name in names]
            self._waiting = [stage for stage in self._waiting if stage not in starting]
        for stage in done:
            stage.source.close()
            log.info("%s: stopped; its last windows are scored", stage.source.name)
        for stage in starting:
            self._start(stage)

    def sources(self) -> List[AudioSource]:
        """Every source the pipeline has, running, being removed or waiting to start (to
        close at the end)."""
        with self._threads_lock:
            stages = [*self.stages, *self._retiring.values(), *self._waiting]
        return [stage.source for stage in stages]

    def health(self) -> Dict[str, Any]:
        """The pipeline's part of the ``…/stats`` message (read from any thread)."""
        fields = pipeline_health(self)
        for report in self.reporters:
            fields.update(report())
        return fields

    def _update(self, began: float) -> None:
        stages = self.stages
        self.stats.samples = self._retired_samples + sum(stage.samples for stage in stages)
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
        if self._end_goes_to_inference(stream):
            self._put(StreamEnd(stream.source_name, stream.channel))
        self._windowers_done(1)

    def _end_goes_to_inference(self, stream: Stream) -> bool:
        """True when ``stream``'s input is being removed: its end is queued behind its last
        windows. Otherwise its end counts as handled now; decided under the lock that
        ``remove_source`` takes, so an input that ends by itself while it is removed is
        counted either way."""
        name = stream.source_name
        with self._threads_lock:
            removed = self._retiring.get(name)
            if removed is not None and stream in removed.streams and not self.stop_event.is_set():
                return True
            self._ended[name] = self._ended.get(name, 0) + 1
            return False

    def _windowers_done(self, count: int) -> None:
        """``count`` windowers ended (or will never start): the last one ends the queue."""
        with self._windowers_lock:
            self._windowers_left -= count
            last = self._windowers_left == 0
        if last:
            self._put(END_OF_STREAM)

    def _put(self, item: Queued) -> None:
        self.windows.offer(item, lambda: bool(self._errors))

    def _count_dropped(self) -> None:
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

    def _on_stream_end(self, end: StreamEnd) -> None:
        """A removed input's stream has its last window scored: close its open events."""
        self._take_replacement()
        flushed = self.postprocessor.flush_stream(end.source, end.channel)
        if self.clips is not None:
            self.clips.end_stream((end.source, end.channel), flushed)
        else:
            self._publish(flushed)
        with self._threads_lock:
            self._ended[end.source] = self._ended.get(end.source, 0) + 1

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
