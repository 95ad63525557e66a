"""``birdd --simulate FILE``: replay a recording through the live pipeline.

Everything that can be refused (config, file, model, species names, database path) is checked
before the log says when the recording starts and before the run is opened in SQLite, so bad
input leaves no rows behind.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from birdd.daemon.app.progress import ProgressLine
from birdd.daemon.app.session import open_sinks, pipeline_settings, run_info, run_session
from birdd.daemon.app.starttime import recording_start
from birdd.daemon.config import BirddConfig
from birdd.daemon.pipeline.chain import Pipeline, SourceSpec
from birdd.daemon.postprocess import PostProcessor
from birdd.daemon.records import StreamClock
from birdd.daemon.sources.base import check_channel
from birdd.daemon.sources.file import FileSource
from birdd.engines.registry import create_engine

log = logging.getLogger("birdd")


def simulate(
    config: BirddConfig, path: Path, start_time: Optional[str], realtime: Optional[float]
) -> int:
    """Run the pipeline over one file; return the process exit code."""
    source = FileSource(path, config.audio.block_s)
    check_channel(config.audio.channels, source.channels, str(path))
    start, origin = recording_start(path, start_time, source.duration_s)
    engine = create_engine(config.engine.for_mode(live=False))
    clock = StreamClock(start, engine.input_spec.sample_rate, origin)
    postprocessor = PostProcessor(
        config.postprocess, engine.artifact, config.station.id, live=False
    )
    settings = pipeline_settings(config, realtime)
    fanout, publisher = open_sinks(config)
    log.info("recording starts %s (from the %s)", start.isoformat(), origin)
    pipeline = Pipeline([SourceSpec(source, clock)], engine, postprocessor, fanout, settings)
    run = run_info(config, engine, "simulate", str(path.resolve()), origin)
    progress = ProgressLine(source.duration_s)
    return run_session(pipeline, fanout, run, config, publisher, progress, "interrupted")
