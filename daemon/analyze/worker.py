"""One file through the simulate pipeline, in this process or in a pool worker.

A worker process loads its engine once, on its first file, and then runs file after file
through ``open_recording`` and ``file_pipeline`` (the code ``birdd --simulate`` runs), each
with its own post-processor, collecting the file's detections; the parent commits them with
the file's row in one transaction. A file that cannot be read comes back with its reason.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from birdd.daemon.app.simulate import file_pipeline, new_postprocessor, open_recording
from birdd.daemon.config import BirddConfig
from birdd.daemon.pipeline.chain import Pipeline
from birdd.daemon.records import Detection, RunInfo
from birdd.daemon.sinks.base import Sink
from birdd.daemon.sinks.fanout import SinkFanout
from birdd.daemon.sources.base import SourceError
from birdd.engines.base import Engine
from birdd.engines.registry import create_engine

log = logging.getLogger("birdd")
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class FileTask:
    index: int
    """The file's place in the job (combined outputs follow it)."""
    path: Path
    data: Optional[bytes] = None
    """The file's bytes when they were read on another machine (``--ray``), else None."""
    mtime_ns: Optional[int] = None
    """Its modification time there (the start time of a file without a recorder stamp)."""


@dataclass
class FileResult:
    index: int
    path: str
    detections: List[Detection] = field(default_factory=list)
    audio_seconds: float = 0.0
    windows: int = 0
    clock_origin: Optional[str] = None
    error: Optional[str] = None
    """Why the file could not be analysed (None: it was)."""
    fatal: bool = False
    """The worker could not load its engine: the job cannot go on."""


class Collector(Sink):
    """Keeps a file's detections for the parent, which stores them with the file's row."""

    def __init__(self) -> None:
        self.detections: List[Detection] = []

    def open(self, run: RunInfo) -> None:
        """Nothing to prepare."""

    def write(self, detections: Sequence[Detection]) -> None:
        self.detections.extend(detections)

    def close(self, status: str) -> None:
        """Nothing to release."""


class FileAnalyser:
    """Analyses files one at a time with one loaded engine."""

    def __init__(self, config: BirddConfig, engine: Engine, run: RunInfo) -> None:
        self.config, self.engine, self.run = config, engine, run
        self._pipeline: Optional[Pipeline] = None

    def stop(self) -> None:
        """Stop the file in flight (Ctrl-C in this process): its threads drain and end."""
        if self._pipeline is not None:
            self._pipeline.stop()

    def analyse(self, task: FileTask) -> FileResult:
        result = FileResult(task.index, str(task.path))
        try:
            recording = open_recording(self.config, task.path, None, task.data, task.mtime_ns)
        except (SourceError, OSError, ValueError) as exc:
            result.error = str(exc)
            return result
        source, _, result.clock_origin = recording
        collector = Collector()
        fanout = SinkFanout([collector])
        try:
            postprocessor = new_postprocessor(self.config, self.engine)
            pipeline = file_pipeline(self.config, self.engine, recording, postprocessor, fanout)
            self._pipeline = pipeline
            fanout.open(self.run)
            status = "failed"
            try:
                stats = pipeline.run()
                status = "complete"
            finally:
                fanout.close(status)
        except Exception as exc:  # one bad file must not end an archive's job
            result.error = f"{type(exc).__name__}: {exc}"
            return result
        finally:
            self._pipeline = None
            source.close()
        result.detections = sorted(collector.detections, key=_in_file_order)
        result.audio_seconds, result.windows = stats.audio_seconds, stats.windows
        return result


def _in_file_order(detection: Detection) -> tuple:
    return str(detection.channel), detection.offset_start, -detection.confidence


# --------------------------------------------------------------------------- pool workers

_analyser: Optional[FileAnalyser] = None
_setup: Optional[tuple] = None


def init_worker(config: BirddConfig, run: RunInfo, parent: int) -> None:
    """Pool initializer: Ctrl-C is the parent's to handle; die with the parent (kill -9)."""
    global _setup
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with(parent)
    _setup = (config, run)


def analyse_in_worker(task: FileTask) -> FileResult:
    """The pool's task: the engine is loaded on the first file (a failure is fatal)."""
    global _analyser
    if _analyser is None:
        assert _setup is not None, "init_worker did not run"
        config, run = _setup
        began = time.monotonic()
        try:
            engine = create_engine(config.engine.for_mode(live=False))
        except Exception as exc:
            return FileResult(task.index, str(task.path), error=str(exc), fatal=True)
        log.debug("worker %d: engine loaded in %.1f s", os.getpid(), time.monotonic() - began)
        _analyser = FileAnalyser(config, engine, run)
    return _analyser.analyse(task)


def _die_with(parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (elsewhere: nothing)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
