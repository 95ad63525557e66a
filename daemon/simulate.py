"""``birdd --simulate FILE``: replay a recording through the live pipeline.

Everything that can be refused (config, file, model, species names) is checked before the run
is opened in SQLite, so bad input leaves no rows behind.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from birdd.engines.registry import create_engine

from .mqtt.service import MqttPublisher
from .pipeline import Pipeline, PipelineSettings, PipelineStats
from .postprocess import PostProcessor
from .progress import ProgressLine
from .records import StreamClock, new_detection_id
from .signals import StopOnSignals
from .sinks.base import RunInfo
from .sinks.fanout import SinkFanout
from .sinks.files import make_output_sink
from .sinks.sqlite import Retention, SQLiteSink
from .sources.base import check_channel
from .sources.file import FileSource
from .starttime import recording_start

log = logging.getLogger("birdd")


def simulate(config: Any, path: Path, start_time: Optional[str], realtime: Optional[float]) -> int:
    """Run the pipeline over one file; return the process exit code."""
    source = FileSource(path, config.audio.block_s)
    check_channel(config.audio.channels, source.channels, str(path))
    start, origin = recording_start(path, start_time, source.duration_s)
    engine = create_engine(config.engine.for_mode(live=False))
    clock = StreamClock(start, engine.input_spec.sample_rate, origin)
    log.info("recording starts %s (from the %s)", start.isoformat(), origin)
    postprocessor = PostProcessor(
        config.postprocess, engine.artifact, config.station.id, clock, live=False
    )
    settings = PipelineSettings(
        channel=config.audio.channels,
        overlap_s=config.windows.overlap_s,
        ring_buffer_s=config.audio.ring_buffer_s,
        live=False,
        realtime_factor=realtime,
    )
    publisher = MqttPublisher(config) if config.mqtt.enabled else None
    sqlite = SQLiteSink(
        config.storage.db,
        on_commit=publisher.notify_commit if publisher else None,
        retention=_retention(config),
    )
    fanout = SinkFanout([sqlite, make_output_sink(config.output.format, config.output.path)])
    pipeline = Pipeline(source, engine, postprocessor, fanout, settings)
    run = RunInfo(
        run_id=new_detection_id(),
        station=config.station.id,
        mode="simulate",
        source=str(path.resolve()),
        started_at=datetime.now(timezone.utc),
        clock_origin=origin,
        model=engine.artifact.identity(),
        config_json=json.dumps(config.model_dump(mode="json"), sort_keys=True),
    )
    return _run_to_end(pipeline, fanout, run, source.duration_s, config, publisher)


def _retention(config: Any) -> Optional[Retention]:
    days = config.storage.retention_days
    return None if days is None else Retention(days, keep_unpublished=config.mqtt.enabled)


def _run_to_end(
    pipeline: Pipeline,
    fanout: SinkFanout,
    run: RunInfo,
    duration_s: float,
    config: Any,
    publisher: Optional[MqttPublisher],
) -> int:
    fanout.open(run)
    if publisher is not None:
        publisher.start(pipeline.health)
    progress = ProgressLine(duration_s)
    status = "failed"
    with StopOnSignals(pipeline.stop, "stopping after the audio already read") as signals:
        try:
            stats = pipeline.run(progress)
            status = "interrupted" if pipeline.stop_event.is_set() else "complete"
        finally:
            progress.finish()
            try:
                fanout.close(status)
            finally:
                if publisher is not None:
                    signals.action, signals.reason = publisher.cancel, LEAVE_OUTBOX
                    _finish_publishing(publisher, config.mqtt.drain_timeout_s)
    log.info(_summary(stats, status, run.run_id, config.storage.db))
    return 0


LEAVE_OUTBOX = "leaving the unpublished detections in the outbox for the next run"


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


def _summary(stats: PipelineStats, status: str, run_id: str, db: Path) -> str:
    return (
        f"{status}: {stats.audio_seconds:,.1f} s of audio in {stats.wall_seconds:,.1f} s "
        f"({stats.realtime_factor:,.0f}x real time), {stats.windows} windows, "
        f"{stats.detections} detection(s); run {run_id} in {db}"
    )
