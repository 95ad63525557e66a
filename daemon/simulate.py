"""``birdd --simulate FILE``: replay a recording through the live pipeline.

Everything that can be refused (config, file, model, species names) is checked before the run
is opened in SQLite, so bad input leaves no rows behind.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from birdd.engines.registry import create_engine

from .pipeline import Pipeline, PipelineSettings, PipelineStats
from .postprocess import PostProcessor
from .progress import ProgressLine
from .records import StreamClock, new_detection_id
from .sinks.base import RunInfo
from .sinks.fanout import SinkFanout
from .sinks.files import make_output_sink
from .sinks.sqlite import SQLiteSink
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
    fanout = SinkFanout(
        [SQLiteSink(config.storage.db), make_output_sink(config.output.format, config.output.path)]
    )
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
    return _run_to_end(pipeline, fanout, run, source.duration_s, config.storage.db)


def _run_to_end(
    pipeline: Pipeline, fanout: SinkFanout, run: RunInfo, duration_s: float, db: Path
) -> int:
    fanout.open(run)
    progress = ProgressLine(duration_s)
    status = "failed"
    with _stop_on_signals(pipeline):
        try:
            stats = pipeline.run(progress)
            status = "interrupted" if pipeline.stop_event.is_set() else "complete"
        finally:
            progress.finish()
            fanout.close(status)
    log.info(_summary(stats, status, run.run_id, db))
    return 0


def _summary(stats: PipelineStats, status: str, run_id: str, db: Path) -> str:
    return (
        f"{status}: {stats.audio_seconds:,.1f} s of audio in {stats.wall_seconds:,.1f} s "
        f"({stats.realtime_factor:,.0f}x real time), {stats.windows} windows, "
        f"{stats.detections} detection(s); run {run_id} in {db}"
    )


class _stop_on_signals:
    """SIGINT and SIGTERM ask the pipeline to drain and stop instead of killing the process."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self._previous: dict = {}

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("%s: stopping after the audio already read", signal.Signals(signum).name)
        self.pipeline.stop()

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
