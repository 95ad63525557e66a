"""What every analysing command shares: the sinks, the run record, and running the pipeline
to its end with signals handled, sinks flushed and the MQTT outbox drained."""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Tuple

from birdd.daemon.app.signals import StopOnSignals
from birdd.daemon.clips.stage import ClipSettings
from birdd.daemon.clips.upload import ClipUploader, build_uploader
from birdd.daemon.config import BirddConfig
from birdd.daemon.mqtt.service import MqttPublisher
from birdd.daemon.pipeline.chain import Pipeline, PipelineSettings, PipelineStats
from birdd.daemon.records import RunInfo, new_detection_id
from birdd.daemon.sinks.fanout import SinkFanout
from birdd.daemon.sinks.files import make_output_sink
from birdd.daemon.sinks.sqlite import Retention, SQLiteSink
from birdd.daemon.store.housekeeping import Housekeeping, housekeeping_during
from birdd.daemon.store.sqlite_health import recover_damaged
from birdd.engines.base import Engine

log = logging.getLogger("birdd")


def open_sinks(config: BirddConfig) -> Tuple[SinkFanout, Optional[MqttPublisher]]:
    """SQLite (the source of truth), the text output, and the MQTT publisher when enabled; a
    database path that cannot be one is refused here, before the run is announced, and a
    damaged database is moved aside (kept) for a new one."""
    recover_damaged(config.storage.db)
    publisher = MqttPublisher(config) if config.mqtt.enabled else None
    sqlite = SQLiteSink(
        config.storage.db,
        on_commit=publisher.notify_commit if publisher else None,
        retention=_retention(config),
    )
    return SinkFanout(
        [sqlite, make_output_sink(config.output.format, config.output.path)]
    ), publisher


def run_info(
    config: BirddConfig, engine: Engine, mode: str, source: str, clock_origin: str
) -> RunInfo:
    return RunInfo(
        run_id=new_detection_id(),
        station=config.station.id,
        mode=mode,
        source=source,
        started_at=datetime.now(timezone.utc),
        clock_origin=clock_origin,
        model=engine.artifact.identity(),
        config_json=json.dumps(config.model_dump(mode="json"), sort_keys=True),
    )


def pipeline_settings(config: BirddConfig, realtime: Optional[float] = None) -> PipelineSettings:
    channels = config.audio.channels
    return PipelineSettings(
        channels=channels if isinstance(channels, list) else [channels],
        overlap_s=config.windows.overlap_s,
        ring_buffer_s=config.audio.ring_buffer_s,
        realtime_factor=realtime,
        silence_warn_s=config.audio.silence_warn_s,
        clips=clip_settings(config),
    )


def clip_settings(config: BirddConfig) -> Optional[ClipSettings]:
    """Clips, or only the privacy guard's detection drops, or neither (None)."""
    clips = config.clips
    if not clips.enabled and clips.privacy.drop_detections_within_s is None:
        return None
    return ClipSettings(
        clips,
        config.postprocess.max_event_s,
        config.postprocess.sensitivity,
        config.storage.min_free_mb,
    )


def _retention(config: BirddConfig) -> Optional[Retention]:
    days = config.storage.retention_days
    return None if days is None else Retention(days, keep_unpublished=config.mqtt.enabled)


def run_session(
    pipeline: Pipeline,
    fanout: SinkFanout,
    run: RunInfo,
    config: BirddConfig,
    publisher: Optional[MqttPublisher],
    progress: Callable[[PipelineStats], None],
    stopped_status: str,
    shortfall: Optional[Callable[[], Optional[str]]] = None,
    on_housekeeping: Optional[Callable[[Housekeeping], None]] = None,
) -> int:
    """Run the pipeline until its sources end or it is stopped (then the run is marked
    ``stopped_status``), flush every sink and drain the MQTT outbox; return the exit code.

    ``shortfall``, asked when the pipeline has ended, says why the run never got what it
    exists for (no audio from any input), else None; a shortfall marks the run failed and
    makes the exit code 1, except after SIGINT/SIGTERM: an operator stopping a service that
    still waits for its microphone gets a warning and exit 0 (systemd shows no failure).

    The housekeeping (clips' budget, free floor, WAL checkpoint, vacuum) runs on its own
    thread during a live run, and once after every run; ``on_housekeeping`` is handed it
    (a config reload changes its clips' budget)."""
    uploader = build_uploader(config.storage.db, config.clips.upload)
    if uploader is not None:
        pipeline.reporters.append(uploader.stats)
    fanout.open(run)
    status = "failed"
    keeping = housekeeping_during(config, live=run.mode == "live")
    stopping = StopOnSignals(pipeline.stop, "stopping after the audio already read")
    with keeping as keeper, stopping as signals:
        if on_housekeeping is not None:
            on_housekeeping(keeper)
        if publisher is not None:
            publisher.start(pipeline.health)
        if uploader is not None:
            uploader.start()
        try:
            stats = pipeline.run(progress)
            missing = shortfall() if shortfall is not None else None
            if missing is not None and signals.received is not None:
                log.warning("%s", missing)
                missing = None
            if missing is not None:
                status = "failed"
            else:
                status = stopped_status if pipeline.stop_event.is_set() else "complete"
        finally:
            finish = getattr(progress, "finish", None)
            if finish is not None:
                finish()
            try:
                fanout.close(status)
            finally:
                if uploader is not None:
                    _finish_uploads(uploader, signals, config.clips.upload.drain_timeout_s)
                if publisher is not None:
                    signals.action, signals.reason = publisher.cancel, LEAVE_OUTBOX
                    _finish_publishing(publisher, config.mqtt.drain_timeout_s)
        log.info(_summary(stats, status, run.run_id, config.storage.db))
        if missing is not None:
            log.error("error: %s", missing)
            return 1
        return 0


LEAVE_OUTBOX = "leaving the unpublished detections in the outbox for the next run"
LEAVE_CLIPS = "leaving the clips not yet uploaded in the outbox for the next run"


def _finish_publishing(publisher: MqttPublisher, timeout_s: float) -> None:
    """Give the broker up to ``timeout_s`` to acknowledge the outbox, then say goodbye."""
    publisher.drain(timeout_s)
    remaining = publisher.stop()
    if remaining:
        log.warning(
            "mqtt: %d detection(s) not acknowledged by the broker stay in the outbox; "
            "the next run or `birdd publish` sends them",
            remaining,
        )


def _finish_uploads(uploader: ClipUploader, signals: StopOnSignals, timeout_s: float) -> None:
    """Give the hub up to ``timeout_s`` to take the clips still waiting (SIGINT / SIGTERM
    cuts it short), then stop the uploader."""
    cancel = threading.Event()
    signals.action, signals.reason = cancel.set, LEAVE_CLIPS
    uploader.drain(timeout_s, cancel)
    remaining = uploader.stop()
    if remaining:
        log.warning(
            "clips: %d clip(s) not yet on the hub stay in the upload outbox; the next run "
            "sends them",
            remaining,
        )


def _summary(stats: PipelineStats, status: str, run_id: str, db: Path) -> str:
    unscored = (
        f" ({stats.windows_unscored} not scored: engine failures, see gaps)"
        if stats.windows_unscored
        else ""
    )
    gate = stats.gate
    gated = (
        f", the gate called {gate.no_bird_windows} no-bird and dropped {gate.birds_dropped} bird "
        "score(s) there"
        if gate is not None
        else ""
    )
    return (
        f"{status}: {stats.audio_seconds:,.1f} s of audio in {stats.wall_seconds:,.1f} s "
        f"({stats.realtime_factor:,.0f}x real time), {stats.windows} windows{unscored}{gated}, "
        f"{stats.detections} detection(s){_clips(stats)}; run {run_id} in {db}"
    )


def _clips(stats: PipelineStats) -> str:
    counts = stats.clips
    if counts is None:
        return ""
    near = counts.detections_dropped_privacy
    dropped = f", {near} dropped near speech" if near else ""
    if not counts.clips_on:
        return dropped
    return (
        f"{dropped}, clips: {counts.written} written, {counts.dropped_privacy} not kept "
        f"(speech), {counts.dropped_backlog} dropped (backlog), {counts.failed} failed"
        f"{f', {counts.dropped_disk} dropped (disk)' if counts.dropped_disk else ''}"
    )
