"""``birdd run``: the live daemon over sound devices, network streams and stdin.

Every input gets its own ring buffer and clock; all share one engine. Inputs that are missing
are waited for (or, with ``audio.require_device_at_start``, refused before the run is opened).
``--duration`` makes a bounded listening session: listen ten minutes, print what was heard.
A run that got no audio at all from any input, however it ended, failed (exit status 1).
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Callable, Optional

from birdd.daemon.app.health import RunHealth
from birdd.daemon.app.inputs import CLOCK_ORIGIN, LiveInputs, open_sources, refuse_recordings
from birdd.daemon.app.reclips import retune_clips
from birdd.daemon.app.reload import ConfigReload
from birdd.daemon.app.sdnotify import notify
from birdd.daemon.app.session import open_sinks, pipeline_settings, run_info, run_session
from birdd.daemon.app.signals import OnSignal
from birdd.daemon.config import BirddConfig
from birdd.daemon.pipeline.chain import Pipeline, PipelineStats, SourceSpec
from birdd.daemon.pipeline.clock import LiveClock
from birdd.daemon.postprocess import PostProcessor
from birdd.daemon.postprocess.config import PostprocessConfig
from birdd.engines.registry import create_engine

log = logging.getLogger("birdd")

LOSS_CHECK_S = 60.0
LOSS_WARN_FRACTION = 0.01
STATUS_LOG_S = 600.0


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
    reload.reinput = LiveInputs(pipeline, rate, config).change
    if pipeline.clips is not None:
        reload.reclip = lambda new: retune_clips(pipeline, engine.artifact, new)
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
        for source in pipeline.sources():
            source.close()


def no_audio(pipeline: Pipeline) -> Optional[str]:
    """Why no input delivered any audio, each with the reason its supervisor last gave; None
    when one did."""
    if pipeline.stats.samples:  # counts the inputs a reload removed too
        return None
    reasons = "; ".join(
        f"{stage.source.name}: {stage.source.problem or 'nothing arrived'}"
        for stage in pipeline.stages
    )
    return f"no audio from any input: {reasons}"
