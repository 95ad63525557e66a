"""``birdd --simulate FILE``: replay a recording through the live pipeline.

Everything that can be refused (config, file, model, species names, database path) is checked
before the log says when the recording starts and before the run is opened in SQLite, so bad
input leaves no rows behind. ``birdd analyze`` runs each of its files through the same
``open_recording`` and ``file_pipeline``.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Optional, Tuple

from birdd.daemon.app.progress import ProgressLine
from birdd.daemon.app.session import open_sinks, pipeline_settings, run_info, run_session
from birdd.daemon.app.starttime import recording_start
from birdd.daemon.config import BirddConfig
from birdd.daemon.pipeline.chain import Pipeline, SourceSpec
from birdd.daemon.postprocess import PostProcessor
from birdd.daemon.records import StreamClock
from birdd.daemon.sinks.fanout import SinkFanout
from birdd.daemon.sources.base import check_channel
from birdd.daemon.sources.file import FileSource
from birdd.engines.base import Engine
from birdd.engines.registry import create_engine

log = logging.getLogger("birdd")


def open_recording(
    config: BirddConfig,
    path: Path,
    start_time: Optional[str],
    data: Optional[bytes] = None,
    mtime_ns: Optional[int] = None,
) -> Tuple[FileSource, datetime, str]:
    """The file as a source (its channel checked), its start time and where that came from.
    ``data`` and ``mtime_ns``: the file's bytes and modification time, read elsewhere."""
    source = FileSource(path, config.audio.block_s, data)
    try:
        check_channel(config.audio.channels, source.channels, str(path))
        start, origin = recording_start(path, start_time, source.duration_s, mtime_ns)
    except BaseException:
        source.close()
        raise
    return source, start, origin


def new_postprocessor(config: BirddConfig, engine: Engine) -> PostProcessor:
    """Post-processing for one recording (a new one per file: events end with the file)."""
    return PostProcessor(config.postprocess, engine.artifact, config.station.id, live=False)


def file_pipeline(
    config: BirddConfig,
    engine: Engine,
    recording: Tuple[FileSource, datetime, str],
    postprocessor: PostProcessor,
    fanout: SinkFanout,
    realtime: Optional[float] = None,
) -> Pipeline:
    """The pipeline over one recording from ``open_recording``."""
    source, start, origin = recording
    clock = StreamClock(start, engine.input_spec.sample_rate, origin)
    settings = pipeline_settings(config, realtime)
    return Pipeline([SourceSpec(source, clock)], engine, postprocessor, fanout, settings)


def simulate(
    config: BirddConfig, path: Path, start_time: Optional[str], realtime: Optional[float]
) -> int:
    """Run the pipeline over one file; return the process exit code."""
    recording = open_recording(config, path, start_time)
    source, start, origin = recording
    engine = create_engine(config.engine.for_mode(live=False))
    postprocessor = new_postprocessor(config, engine)
    fanout, publisher = open_sinks(config)
    pipeline = file_pipeline(config, engine, recording, postprocessor, fanout, realtime)
    log.info("recording starts %s (from the %s)", start.isoformat(), origin)
    run = run_info(config, engine, "simulate", str(path.resolve()), origin)
    progress = ProgressLine(source.duration_s)
    return run_session(pipeline, fanout, run, config, publisher, progress, "interrupted")
