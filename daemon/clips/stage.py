"""The clip stage, between post-processing and the sinks, on the inference thread.

Each detection waits until the windows around it are scored (its clip's post-roll, or the
privacy look-ahead); then the privacy guard decides: a detection near speech is dropped (with
``drop_detections_within_s``), a clip the model hears people in is not kept, and the rest go to
the clip writer, which passes every detection on in the order it was decided."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from birdd.daemon.clips.config import ClipsConfig
from birdd.daemon.clips.privacy import ClipsError, SpeechGuard
from birdd.daemon.clips.spans import (
    ClipSpan,
    HeardLog,
    clip_span,
    ring_seconds_needed,
    sample_index,
)
from birdd.daemon.clips.writer import ClipCounts, ClipJob, ClipWriter, Publish, RingHold
from birdd.daemon.handover import Handover
from birdd.daemon.pipeline.ring import RingBuffer
from birdd.daemon.records import Channel, Detection, ScoredWindow
from birdd.engines.models.artifact import ModelArtifact

log = logging.getLogger("birdd")
StreamKey = Tuple[str, Channel]
MAX_RING_S = 900.0
"""The longest ring clips may ask for (about 170 MB a stream of float32 at 48 kHz)."""


@dataclass(frozen=True)
class ClipSettings:
    """The ``clips`` section with what the stage needs from post-processing."""

    config: ClipsConfig
    max_event_s: float
    sensitivity: float
    min_free_mb: float = 0.0
    """``storage.min_free_mb``: no clip is written while its disk has less free."""

    @property
    def after_s(self) -> float:
        """How far past an event the stage must have heard before it decides."""
        within = self.config.privacy.drop_detections_within_s or 0.0
        return max(self.config.post_s, within) if self.config.enabled else within


@dataclass
class _Waiting:
    detection: Detection
    span: ClipSpan
    decide_at: int
    """The stream sample a scored window must start at (or after) before the decision."""
    earliest: int
    """The first sample the decision asks about (the clip's, or the look-behind's)."""


@dataclass
class _Stream:
    hold: Optional[RingHold]
    """Only with clips: keeps the audio of clips not yet cut in the ring."""
    heard: HeardLog = field(default_factory=HeardLog)
    waiting: List[_Waiting] = field(default_factory=list)


class ClipStage:
    def __init__(
        self,
        settings: ClipSettings,
        guard: Optional[SpeechGuard],
        rings: Mapping[StreamKey, RingBuffer],
        rate: int,
        window_samples: int,
        writer: Optional[ClipWriter],
        publish: Publish,
    ) -> None:
        self.counts = writer.counts if writer is not None else ClipCounts(clips_on=False)
        self.writer = writer
        self._rate = rate
        self._window_samples = window_samples
        self._publish = publish
        self._tune(settings, guard)
        self._retuned: Handover[Tuple[ClipSettings, Optional[SpeechGuard]]] = Handover()
        self._streams: Dict[StreamKey, _Stream] = {
            key: _Stream(RingHold(ring) if writer is not None else None)
            for key, ring in rings.items()
        }

    def _tune(self, settings: ClipSettings, guard: Optional[SpeechGuard]) -> None:
        config, rate = settings.config, self._rate
        self._config = config
        self._guard = guard
        within = config.privacy.drop_detections_within_s
        self._within = None if within is None else round(within * rate)
        self._after = round(settings.after_s * rate)
        behind = max(config.pre_s, within or 0.0) + settings.max_event_s
        self._keep_behind = round(behind * rate) + self._window_samples

    def retune(self, settings: ClipSettings, guard: Optional[SpeechGuard]) -> None:
        """A reload's clips settings (folder, format, pre- and post-roll, privacy), from the
        next detection on: the folder and format at once, the rest handed to the inference
        thread for its next window. The detections already waiting keep their clip spans."""
        if self.writer is not None:
            self.writer.retarget(settings.config.dir, settings.config.format)
        self._retuned.give((settings, guard))

    def process(self, scored: ScoredWindow, detections: Sequence[Detection]) -> None:
        """One scored window of a stream and the detections it closed."""
        retuned = self._retuned.take()
        if retuned is not None:
            self._tune(*retuned)
        window = scored.window
        stream = self._streams[(window.source, window.channel)]
        for detection in detections:
            self._wait(stream, detection)
        if self._guard is not None:
            level = self._guard.level(scored.scores)
            stream.heard.add(window.start_sample, window.end_sample, level)
        ready = [item for item in stream.waiting if window.start_sample >= item.decide_at]
        self._decide(stream, ready)
        floor = window.start_sample - self._keep_behind
        if stream.hold is not None:
            stream.hold.advance(floor)
        stream.heard.forget_before(min([floor, *(item.earliest for item in stream.waiting)]))

    def flush(self, detections: Sequence[Detection]) -> None:
        """End of the streams: decide on every detection left (``detections``: the events
        post-processing flushed); the clips are cut short where their streams ended."""
        for detection in detections:
            self._wait(self._streams[(detection.source, detection.channel)], detection)
        for stream in list(self._streams.values()):
            self._decide(stream, list(stream.waiting))

    def add_stream(self, key: StreamKey, ring: RingBuffer) -> None:
        """A stream started by a reload (an input added or restarted)."""
        self._streams[key] = _Stream(RingHold(ring) if self.writer is not None else None)

    def end_stream(self, key: StreamKey, detections: Sequence[Detection]) -> None:
        """One stream ended while the others go on: decide on what it left and forget it."""
        stream = self._streams.pop(key)
        for detection in detections:
            self._wait(stream, detection)
        self._decide(stream, list(stream.waiting))

    def stats(self) -> Dict[str, int]:
        """The stage's fields of the ``…/stats`` message."""
        return self.counts.to_stats()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def _wait(self, stream: _Stream, detection: Detection) -> None:
        span = clip_span(detection, self._rate, self._config.pre_s, self._config.post_s)
        end = sample_index(detection.offset_end, self._rate)
        start = span.event_start
        earliest = span.start if self._within is None else min(span.start, start - self._within)
        stream.waiting.append(_Waiting(detection, span, end + self._after, earliest))
        if stream.hold is not None:
            stream.hold.keep(span.start)

    def _decide(self, stream: _Stream, ready: List[_Waiting]) -> None:
        for item in ready:
            stream.waiting.remove(item)
            job = self._job(stream, item)
            if stream.hold is not None and (job is None or job.span is None):
                stream.hold.done(item.span.start)
            if job is not None:
                self._send(job)

    def _job(self, stream: _Stream, item: _Waiting) -> Optional[ClipJob]:
        """What to do with a detection now decided: None drops it."""
        detection = item.detection
        if self._within is not None:
            start = item.span.event_start - self._within
            end = sample_index(detection.offset_end, self._rate) + self._within
            if self._hears(stream, start, end):
                self.counts.add("detections_dropped_privacy")
                return None
        if self.writer is None:
            return ClipJob(detection)
        if self._hears(stream, item.span.start, item.span.end):
            self.counts.add("dropped_privacy")
            return ClipJob(detection)
        return ClipJob(detection, item.span, stream.hold)

    def _hears(self, stream: _Stream, start: int, end: int) -> bool:
        if self._guard is None:
            return False
        level = stream.heard.loudest(start, end)
        return level is not None and self._guard.hears(level)

    def _send(self, job: ClipJob) -> None:
        if self.writer is None:
            self._publish([job.detection])
        elif not self.writer.submit(job):
            if job.span is not None and job.hold is not None:
                self.counts.add("dropped_backlog")
                job.hold.done(job.span.start)
            self._publish([job.detection])


def build_clip_stage(
    settings: Optional[ClipSettings],
    artifact: ModelArtifact,
    rings: Mapping[StreamKey, RingBuffer],
    window_samples: int,
    publish: Publish,
    live: bool,
) -> Optional[ClipStage]:
    """The stage for ``settings`` (None: no clips and no privacy drops, no stage)."""
    if settings is None:
        return None
    config = settings.config
    rate = artifact.sample_rate
    guard = speech_guard(settings, artifact)
    writer = None
    if config.enabled:
        check_folder(config)
        floor = int(settings.min_free_mb * 1e6)
        writer = ClipWriter(config.dir, config.format, rate, publish, live, ClipCounts(), floor)
    return ClipStage(settings, guard, rings, rate, window_samples, writer, publish)


def speech_guard(settings: ClipSettings, artifact: ModelArtifact) -> Optional[SpeechGuard]:
    """The privacy guard (None without ``clips.privacy.human_threshold``)."""
    threshold = settings.config.privacy.human_threshold
    if threshold is None:
        return None
    return SpeechGuard(
        artifact.species, artifact.activation, settings.sensitivity, threshold, artifact.name
    )


def check_folder(config: ClipsConfig) -> None:
    """Refuse a clips folder that cannot be created or written, before the run starts."""
    try:
        config.dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ClipsError(
            f"clips.dir {config.dir}: cannot create it ({exc.strerror}): give a writable "
            "folder (--clips DIR or clips.dir)"
        ) from None
    if not os.access(config.dir, os.W_OK | os.X_OK):
        raise ClipsError(
            f"clips.dir {config.dir}: not writable by this user: give a writable folder "
            "(--clips DIR or clips.dir)"
        )


def ring_seconds(
    settings: Optional[ClipSettings], ring_buffer_s: float, rate: int, window: int, hop: int
) -> float:
    """The capture ring's length: ``audio.ring_buffer_s``, or longer where clips need it."""
    if settings is None or not settings.config.enabled:
        return ring_buffer_s
    config = settings.config
    needed = ring_seconds_needed(
        config.pre_s, settings.after_s, settings.max_event_s, window / rate, hop / rate
    )
    if needed > MAX_RING_S:
        raise ClipsError(
            f"clips: the ring buffer would have to keep {needed:.0f} s of audio per input "
            f"(pre_s + postprocess.max_event_s + post_s + queued windows), more than "
            f"{MAX_RING_S:.0f} s: lower postprocess.max_event_s or clips.pre_s / post_s"
        )
    if needed > ring_buffer_s:
        log.debug(
            "clips: ring buffer of %.0f s per input (audio.ring_buffer_s %.0f s could lose "
            "the start of a long event's clip)",
            needed,
            ring_buffer_s,
        )
    return max(ring_buffer_s, needed)
