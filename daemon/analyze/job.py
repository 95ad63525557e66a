"""``birdd analyze``: plan the job (what is done already), run the files on every core, and
commit each file with its detections as it finishes.

Layout: N worker processes (``--workers``, default one per core), each with its own engine
(``engine.threads`` = cores / workers unless ``--threads`` says otherwise) running whole files
through the simulate pipeline; the parent is the single writer of SQLite and the outputs. One
worker runs in this process, with no pool. Exit status: 0 when every file was analysed (or
had been before), 1 when some failed or the job was stopped, 2 on bad input (raised as
ValueError, EngineError, ... before anything is written). With ``--ray`` the files run on a
Ray cluster's actors instead of the local pool (``ray_job.py``); the rest is the same.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import soundfile

from birdd.daemon.analyze.outputs import TextOutputs
from birdd.daemon.analyze.paths import AudioFile, expand_paths
from birdd.daemon.analyze.progress import JobProgress
from birdd.daemon.analyze.ray_job import RayCluster, import_ray, model_bundle
from birdd.daemon.analyze.resume import AnalysisKey, FileId, analysis_key, file_id
from birdd.daemon.analyze.worker import (
    FileAnalyser,
    FileResult,
    FileTask,
    analyse_in_worker,
    init_worker,
)
from birdd.daemon.app.session import run_info
from birdd.daemon.app.signals import StopOnSignals
from birdd.daemon.app.simulate import new_postprocessor
from birdd.daemon.config import BirddConfig
from birdd.daemon.records import RunInfo, iso_utc
from birdd.daemon.sinks.sqlite import Retention, SQLiteSink
from birdd.daemon.store.sqlite_health import recover_damaged
from birdd.daemon.store.sqlite_store import SQLiteStore
from birdd.engines.base import Engine
from birdd.engines.errors import EngineError
from birdd.engines.registry import create_engine

log = logging.getLogger("birdd")

CLOCK_ORIGIN = "per file: the file name's recorder stamp, else modification time minus duration"


@dataclass(frozen=True)
class JobOptions:
    paths: Sequence[str]
    workers: int
    force: bool = False
    fmt: Optional[str] = None
    output: Optional[Path] = None
    combined: bool = False
    quiet: bool = False
    ray: Optional[str] = None
    """A Ray cluster's address ("": a local one) to run on instead of the local pool;
    ``workers`` 0 then means one per cluster CPU."""


@dataclass
class Plan:
    """The files this job analyses (in job order), their resume keys, and what it skips."""

    todo: List[AudioFile] = field(default_factory=list)
    ids: List[FileId] = field(default_factory=list)
    audio_s: float = 0.0
    skipped: int = 0


@dataclass
class Tally:
    analysed: int = 0
    detections: int = 0
    audio_s: float = 0.0
    failures: List[Tuple[str, str]] = field(default_factory=list)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def with_threads(config: BirddConfig, threads: int) -> BirddConfig:
    """The config with ``engine.threads`` set, for engines that have the setting."""
    if "threads" not in type(config.engine).model_fields:
        return config
    engine = config.engine.model_copy(update={"threads": threads})
    return config.model_copy(update={"engine": engine})


def analyze(config: BirddConfig, options: JobOptions) -> int:
    """Run the job; return the exit code. Bad input raises before the run is opened."""
    if config.mqtt.enabled:
        raise ValueError(
            "analyze does not publish to MQTT: leave --mqtt and mqtt.enabled off, then send the "
            "stored detections with 'birdd publish --mqtt URL --db DB'"
        )
    if options.ray is not None:
        import_ray()  # without the extra: one line naming it, before any work
    outputs = TextOutputs(options.fmt, options.output, options.combined)
    files = expand_paths(options.paths)
    recover_damaged(config.storage.db)
    engine = create_engine(config.engine.for_mode(live=False))
    new_postprocessor(config, engine)  # refuses unknown species, a missing location model
    key = analysis_key(config, engine.artifact.identity())
    plan = plan_job(files, config.storage.db, key, options.force, outputs)
    summary_stream = sys.stderr if outputs.to_stdout else sys.stdout
    if not plan.todo:
        engine.close()
        print(
            f"nothing to do: all {len(files)} file(s) were analysed before with this model and "
            "these settings (--force analyses them again)",
            file=summary_stream,
        )
        return 0
    cluster = None
    if options.ray is not None:
        bundle = model_bundle(config, engine)  # refuses what an actor could not load alone
        cluster = RayCluster(options.ray, options.workers, _threads(config))
        options = replace(options, workers=cluster.workers)
    source = " ".join(options.paths)
    run = run_info(config, engine, "analyze", source[:1000], CLOCK_ORIGIN)
    log.info(
        "analysing %d file(s), %.2f h of audio, on %d worker(s)%s%s",
        len(plan.todo),
        plan.audio_s / 3600,
        options.workers,
        f" of the Ray cluster at {options.ray or 'a local ray.init()'}" if cluster else "",
        f"; {plan.skipped} done before are skipped" if plan.skipped else "",
    )
    if cluster is not None:
        engine.close()  # the actors load their own
        ids = [identity[2] for identity in plan.ids]
        results = cluster.results(config, run, bundle, [f.path for f in plan.todo], ids)

        def release() -> None:
            results.close()
            cluster.close()

        source_of = _Results(results, lambda: None, release)
    else:
        source_of = _local_results(config, engine, run, plan, options)
    tally, status, wall_s = execute(config, run, plan, options, outputs, key, source_of)
    print(summary(plan, tally, status, wall_s, run, config.storage.db), file=summary_stream)
    for path, reason in tally.failures:
        print(f"failed: {path}: {reason}", file=summary_stream)
    return 0 if status == "complete" and not tally.failures else 1


def plan_job(
    files: Sequence[AudioFile], db: Path, key: AnalysisKey, force: bool, outputs: TextOutputs
) -> Plan:
    """Skip the files the store has as done under ``key`` (and whose table, with per-file
    tables, exists); the rest is the job, with its audio hours from the files' headers."""
    done = set() if force or not db.is_file() else _analysed(db, key)
    plan = Plan()
    for item in files:
        try:
            identity = file_id(item.path)
        except OSError:
            identity = (str(item.path), -1, -1)  # the worker reports why it cannot be read
        table = outputs.table_path(item)
        if identity in done and (table is None or table.is_file()):
            plan.skipped += 1
            continue
        plan.todo.append(item)
        plan.ids.append(identity)
        plan.audio_s += _duration_s(item.path)
    return plan


def _analysed(db: Path, key: AnalysisKey) -> set:
    with SQLiteStore(db) as store:
        return store.analyzed(key.model_sha256, key.settings_sha256)


def _duration_s(path: Path) -> float:
    try:
        return float(soundfile.info(str(path)).duration)
    except (RuntimeError, OSError, soundfile.LibsndfileError):
        return 0.0


@dataclass
class _Results:
    """Where the files' results come from, how to stop the file in flight (Ctrl-C), and
    what to release at the end."""

    results: Iterable[FileResult]
    stop: Callable[[], None]
    release: Callable[[], None]


def _local_results(
    config: BirddConfig, engine: Engine, run: RunInfo, plan: Plan, options: JobOptions
) -> _Results:
    """The local pool (``--workers`` > 1), or one worker in this process."""
    tasks = [FileTask(index, item.path) for index, item in enumerate(plan.todo)]
    if options.workers > 1:
        engine.close()  # each worker loads its own; fork before any thread or database
        context = multiprocessing.get_context("fork")
        pool = context.Pool(
            min(options.workers, len(tasks)), init_worker, (config, run, os.getpid())
        )

        def release() -> None:
            pool.terminate()
            pool.join()

        return _Results(pool.imap_unordered(analyse_in_worker, tasks), lambda: None, release)
    analyser = FileAnalyser(config, engine, run)
    return _Results(map(analyser.analyse, tasks), analyser.stop, engine.close)


def _threads(config: BirddConfig) -> int:
    return int(getattr(config.engine, "threads", 1) or 1)


def execute(
    config: BirddConfig,
    run: RunInfo,
    plan: Plan,
    options: JobOptions,
    outputs: TextOutputs,
    key: AnalysisKey,
    source_of: _Results,
) -> Tuple[Tally, str, float]:
    """Record the planned files' results as they come; return the tally, the run's status
    and the wall time."""
    sqlite = SQLiteSink(config.storage.db, retention=_retention(config))
    tally, status = Tally(), "failed"
    progress = JobProgress(len(plan.todo), plan.audio_s, quiet=options.quiet)
    try:
        sqlite.open(run)
        outputs.open(run)
        with StopOnSignals(_interrupt, "stopping; the files in flight are left for the next run"):
            try:
                for result in source_of.results:
                    _record(result, plan, key, sqlite, outputs, tally)
                    progress.file_done(result.path, result.audio_seconds, result.error)
                status = "complete"
            except KeyboardInterrupt:
                status = "interrupted"
                source_of.stop()
    finally:
        source_of.release()
        progress.finish()
        try:
            outputs.close(status)
        finally:
            sqlite.close(status)
    return tally, status, progress.wall_s


def _interrupt() -> None:
    raise KeyboardInterrupt


def _record(
    result: FileResult,
    plan: Plan,
    key: AnalysisKey,
    sqlite: SQLiteSink,
    outputs: TextOutputs,
    tally: Tally,
) -> None:
    """Commit one file (its row and its detections together), then write its table."""
    if result.fatal:
        raise EngineError(f"a worker could not load the engine: {result.error}")
    row: Dict[str, object] = {
        **key.row(plan.ids[result.index]),
        "status": "failed" if result.error else "done",
        "reason": result.error,
        "clock_origin": result.clock_origin,
        "audio_seconds": round(result.audio_seconds, 3),
        "windows": result.windows,
        "detections": len(result.detections),
        "finished_at": iso_utc(datetime.now(timezone.utc)),
    }
    sqlite.write_file(row, result.detections)
    if result.error:
        tally.failures.append((result.path, result.error))
        outputs.file_failed(result.index)
        return
    outputs.file_done(result.index, plan.todo[result.index], result.detections)
    tally.analysed += 1
    tally.detections += len(result.detections)
    tally.audio_s += result.audio_seconds


def summary(plan: Plan, tally: Tally, status: str, wall_s: float, run: RunInfo, db: Path) -> str:
    failed = f", {len(tally.failures)} failed" if tally.failures else ""
    skipped = (
        f", {plan.skipped} skipped (done before; --force analyses them again)"
        if plan.skipped
        else ""
    )
    speed = tally.audio_s / wall_s if wall_s > 0 else 0.0
    return (
        f"{status}: {tally.analysed} of {len(plan.todo)} file(s) analysed{failed}{skipped}; "
        f"{tally.audio_s / 3600:,.2f} h of audio in {wall_s:,.1f} s ({speed:,.0f}x real time), "
        f"{tally.detections} detection(s); run {run.run_id} in {db}"
    )


def _retention(config: BirddConfig) -> Optional[Retention]:
    days = config.storage.retention_days
    return None if days is None else Retention(days, keep_unpublished=False)
