"""``birdd run``: the live daemon over sound devices, network streams and stdin.

Every input gets its own ring buffer and clock; all share one engine. Inputs that are missing
are waited for (or, with ``audio.require_device_at_start``, refused before the run is opened).
``--duration`` makes a bounded listening session: listen ten minutes, print what was heard.
A run that got no audio at all from any input, however it ended, failed (exit status 1).
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

from birdd.daemon.app.health import RunHealth
from birdd.daemon.app.reload import ConfigReload
from birdd.daemon.app.sdnotify import notify
from birdd.daemon.app.session import open_sinks, pipeline_settings, run_info, run_session
from birdd.daemon.app.signals import OnSignal
from birdd.daemon.config import BirddConfig
from birdd.daemon.pipeline.chain import Pipeline, PipelineStats, SourceSpec
from birdd.daemon.pipeline.clock import LiveClock
from birdd.daemon.postprocess import PostProcessor
from birdd.daemon.postprocess.config import PostprocessConfig
from birdd.daemon.sources.base import AudioSource, SourceError, check_channel
from birdd.daemon.sources.device import DeviceSource
from birdd.daemon.sources.ffmpeg import FfmpegSource, is_url
from birdd.daemon.sources.live import ReconnectPolicy
from birdd.daemon.sources.pyav import PyavSource
from birdd.daemon.sources.stdin import PcmFormat, StdinSource
from birdd.engines.registry import create_engine

log = logging.getLogger("birdd")

CLOCK_ORIGIN = "audio clock"
LOSS_CHECK_S = 60.0
LOSS_WARN_FRACTION = 0.01
STATUS_LOG_S = 600.0


def channels_needed(channels: Any) -> Optional[int]:
    """How many channels to capture for ``audio.channels`` (None: 'mix', take them all)."""
    if channels == "mix":
        return None
    indices = channels if isinstance(channels, list) else [channels]
    return max(indices) + 1


def open_source(spec: Any, config: BirddConfig, model_rate: int) -> AudioSource:
    """The source for one ``audio.inputs`` entry: a device, a URL (for ffmpeg or PyAV, by
    ``audio.decoder``), or '-'."""
    audio = config.audio
    policy = ReconnectPolicy(audio.watchdog_s, audio.reconnect_max_s, audio.require_device_at_start)
    wanted = channels_needed(audio.channels)
    text = str(spec)
    if text == "-":
        raw = PcmFormat(audio.stdin.sample_rate, audio.stdin.channels, audio.stdin.format)
        return StdinSource(raw, audio.block_s, sys.stdin.buffer)
    if is_url(text):
        decoder = PyavSource if audio.decoder == "pyav" else FfmpegSource
        return decoder(text, policy, audio.block_s, model_rate, wanted or 1)
    if "://" in text:
        raise SourceError(
            f"audio.inputs: {text!r} is a URL ffmpeg is not asked to read here; use rtsp://, "
            "rtsps://, http(s)://, srt://, rtmp://, udp://, rtp:// or tcp://"
        )
    return DeviceSource(spec, policy, audio.block_s, audio.sample_rate, wanted)


def refuse_recordings(inputs: Sequence[Any]) -> None:
    """A recording given as a live input would be waited for as a device of that name."""
    for spec in inputs:
        text = str(spec)
        if text != "-" and not text.isdigit() and "://" not in text and Path(text).is_file():
            raise SourceError(
                f"{text} is a recording, not a live input: play it through the live pipeline "
                f"with `birdd --simulate {text} --realtime`"
            )


def open_sources(config: BirddConfig, model_rate: int) -> List[AudioSource]:
    sources = [open_source(spec, config, model_rate) for spec in config.audio.inputs]
    names = [source.name for source in sources]
    if len(set(names)) < len(names):
        raise SourceError(f"audio.inputs names one input twice: {', '.join(names)}")
    for source in sources:
        check_channel(config.audio.channels, source.channels, source.name)
    return sources


class LiveMonitor:
    """Called by the pipeline four times a second: tells systemd it is ready and what the
    inputs are doing, runs the health check (the watchdog's pings), warns when more than 1% of
    a minute's audio was overwritten before it was analysed, logs a status line every ten
    minutes, ends a ``--duration`` run, and reloads the config when SIGHUP asked for it.

    The duration is kept here, in the thread that runs the pipeline, rather than by a timer
    thread: a timer cancelled as the run ended could still be alive when the interpreter
    exited, holding the pipeline (and its soxr resamplers, which nanobind then reported as
    leaked)."""

    def __init__(
        self,
        pipeline: Pipeline,
        health: RunHealth,
        duration_s: Optional[float] = None,
        reload: Optional[ConfigReload] = None,
    ) -> None:
        self.pipeline, self.health, self.reload = pipeline, health, reload
        self._checked_at = self._logged_at = time.monotonic()
        self._stop_at = None if duration_s is None else self._checked_at + duration_s
        self._samples = self._lost = 0
        self._told: Optional[str] = None

    def __call__(self, stats: PipelineStats) -> None:
        self._tell_systemd()
        if self.reload is not None:
            self.reload.poll()
        self.health.tick()
        now = time.monotonic()
        if self._stop_at is not None and now >= self._stop_at:
            self._stop_at = None
            self.pipeline.stop()
        if now - self._checked_at >= LOSS_CHECK_S:
            self._check_loss(stats)
            self._checked_at = now
        if now - self._logged_at >= STATUS_LOG_S:
            self._logged_at = now
            log.info(self._status(stats))

    def _tell_systemd(self) -> None:
        status = "; ".join(stage.source.status() for stage in self.pipeline.stages)
        if status != self._told:
            ready = "READY=1\n" if self._told is None else ""
            notify(f"{ready}STATUS={status}")
            self._told = status

    def _check_loss(self, stats: PipelineStats) -> None:
        lost = sum(stream.ring.overwritten for stream in self.pipeline.streams)
        samples = sum(stream.ring.written for stream in self.pipeline.streams)
        new_lost, new_samples = lost - self._lost, samples - self._samples
        self._lost, self._samples = lost, samples
        if new_samples and new_lost > LOSS_WARN_FRACTION * new_samples:
            log.warning(
                "%.1f%% of the last minute's audio was overwritten before analysis: the engine "
                "is too slow for this machine; use fewer inputs or channels, more threads, or a "
                "faster engine",
                100 * new_lost / new_samples,
            )

    def _status(self, stats: PipelineStats) -> str:
        sources = "; ".join(stage.source.status() for stage in self.pipeline.stages)
        return (
            f"listening: {stats.audio_seconds / 3600:,.1f} h of audio, {stats.windows} windows, "
            f"{stats.detections} detection(s), {len(stats.gaps)} gap(s); {sources}"
        )


def run_live(
    config: BirddConfig,
    duration_s: Optional[float],
    load: Callable[[], BirddConfig],
) -> int:
    """Listen until stopped (SIGINT/SIGTERM), until ``duration_s`` or until stdin ends;
    SIGHUP reads the config again through ``load`` (the file and the flags of the start)."""
    reload = ConfigReload(config, load, lambda _: None)  # apply: once the pipeline exists
    with OnSignal(signal.SIGHUP, reload.request):
        return _run_live(config, duration_s, reload)


def _run_live(config: BirddConfig, duration_s: Optional[float], reload: ConfigReload) -> int:
    refuse_recordings(config.audio.inputs)
    engine = create_engine(config.engine.for_mode(live=True))
    rate = engine.input_spec.sample_rate
    sources = open_sources(config, rate)
    postprocessor = PostProcessor(config.postprocess, engine.artifact, config.station.id, live=True)
    fanout, publisher = open_sinks(config)
    specs = [SourceSpec(source, LiveClock(rate, CLOCK_ORIGIN)) for source in sources]
    pipeline = Pipeline(specs, engine, postprocessor, fanout, pipeline_settings(config))

    def apply(settings: PostprocessConfig) -> None:
        new = PostProcessor(settings, engine.artifact, config.station.id, live=True)
        pipeline.replace_postprocessor(new)

    reload.apply = apply
    if publisher is not None:
        reload.reconnect = publisher.reconnect
    names = ", ".join(source.name for source in sources)
    run = run_info(config, engine, "live", names, CLOCK_ORIGIN)
    log.info("listening to %s (%s)", names, run.run_id)
    health = RunHealth(pipeline, config, publisher)
    monitor = LiveMonitor(pipeline, health, duration_s, reload)
    try:
        health.start()
        return run_session(
            pipeline,
            fanout,
            run,
            config,
            publisher,
            monitor,
            "complete",
            shortfall=lambda: no_audio(pipeline),
            on_housekeeping=lambda keeper: setattr(reload, "rebudget", keeper.rebudget),
        )
    finally:
        health.close()
        for source in sources:
            source.close()


def no_audio(pipeline: Pipeline) -> Optional[str]:
    """Why no input delivered any audio, each with the reason its supervisor last gave; None
    when one did."""
    if any(stage.samples for stage in pipeline.stages):
        return None
    reasons = "; ".join(
        f"{stage.source.name}: {stage.source.problem or 'nothing arrived'}"
        for stage in pipeline.stages
    )
    return f"no audio from any input: {reasons}"
