"""The daemon outlives its engine: a worker killed mid-run costs no window, a batch the
engine cannot score becomes a gap and the run goes on, and a broken engine ends the run with
one line. Real BirdNET in a real worker process, real recordings, real SQLite."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

import pytest
from birdd_testing import REPO, THRUSH, birdd_command, jsonl_rows, recording, simulate_args

from birdd.daemon.app.session import open_sinks, pipeline_settings, run_info
from birdd.daemon.config import load_config
from birdd.daemon.pipeline.chain import Pipeline, PipelineStats, SourceSpec
from birdd.daemon.postprocess import PostProcessor
from birdd.daemon.records import StreamClock
from birdd.daemon.sources.file import FileSource
from birdd.engines.errors import EngineError
from birdd.engines.models.artifact import load_artifact
from birdd.engines.models.modeldir import resolve_model
from birdd.engines.tflite import TFLiteConfig
from birdd.engines.worker import WorkerEngine

START = datetime(2024, 5, 1, 5, 0, tzinfo=timezone.utc)


def worker_config_file(tmp_path: Path) -> Path:
    config = tmp_path / "birdd.yaml"
    config.write_text(f"engine:\n  type: tflite\n  batch_size: 1\n  python: {sys.executable}\n")
    return config


def children_of(pid: int) -> List[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def thrush_run(config: Path, db: Path, *extra: str) -> List[str]:
    """`birdd --simulate` of the thrush recording, its engine in a worker, every window listed."""
    flags = ("--config", str(config), "--min-conf", "0.1", "--start-time", START.isoformat())
    return birdd_command(*simulate_args(recording(THRUSH), db, *flags, *extra))


def species_by_window(stdout: str) -> List[tuple]:
    return sorted(
        (row["offset_start"], row["species"]["scientific"], round(row["confidence"], 4))
        for row in jsonl_rows(stdout)
    )


def test_a_worker_killed_during_a_run_loses_no_window(birdnet_model, tmp_path):
    """SIGKILL the engine worker while `birdd --simulate` paces a recording: the worker is
    restarted, and the detections are exactly those of an undisturbed run."""
    config = worker_config_file(tmp_path)
    undisturbed = subprocess.run(
        thrush_run(config, tmp_path / "ref.db"), capture_output=True, text=True, timeout=300
    )
    assert undisturbed.returncode == 0, undisturbed.stderr
    expected = species_by_window(undisturbed.stdout)
    assert len(expected) >= 3

    run = subprocess.Popen(
        thrush_run(config, tmp_path / "db.sqlite", "--realtime", "4"),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed: Optional[int] = None
    deadline = time.monotonic() + 60
    while killed is None and run.poll() is None and time.monotonic() < deadline:
        workers = children_of(run.pid)
        if workers:
            time.sleep(2.5)  # loaded and scoring: 30 s of audio at 4x takes about 7.5 s
            killed = workers[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 0, stderr
    assert killed is not None, "the worker process was never seen"
    assert "restarting it (restart 1)" in stderr, stderr
    assert species_by_window(stdout) == expected
    with sqlite3.connect(str(tmp_path / "db.sqlite")) as db:
        assert db.execute("SELECT status FROM runs").fetchall() == [("complete",)]
        assert db.execute("SELECT COUNT(*) FROM gaps").fetchone() == (0,)


class KillOnSends:
    """Kills the worker as each send numbered in ``sends`` (1-based) reaches it. The engine
    resends a batch once after a death, so with batch_size 1, sends {2, 3} are the second
    window and its retry: a window that kills every worker it is given."""

    def __init__(self, sends: range) -> None:
        self.sends = sends
        self.sent = 0

    def __call__(self, pid: int) -> None:
        self.sent += 1
        if self.sent in self.sends:
            os.kill(pid, signal.SIGKILL)


def run_pipeline(tmp_path: Path, killer: KillOnSends, max_restarts: int) -> PipelineStats:
    """The pipeline of `birdd --simulate` over the thrush recording, its engine in a worker."""
    overrides = {
        "storage.db": str(tmp_path / "db.sqlite"),
        "postprocess.per_window": True,
        "postprocess.min_confidence": 0.1,
    }
    config = load_config(None, overrides)
    engine_config = TFLiteConfig(batch_size=1, python=sys.executable)
    artifact = load_artifact(resolve_model(engine_config.model, engine_config.type))
    engine = WorkerEngine(engine_config, artifact, max_restarts=max_restarts)
    engine.load()
    engine._on_sent = killer
    source = FileSource(recording(THRUSH), config.audio.block_s)
    clock = StreamClock(START, artifact.sample_rate, "test")
    postprocessor = PostProcessor(config.postprocess, artifact, "test", live=False)
    fanout, _ = open_sinks(config)
    pipeline = Pipeline(
        [SourceSpec(source, clock)], engine, postprocessor, fanout, pipeline_settings(config)
    )
    fanout.open(run_info(config, engine, "simulate", str(recording(THRUSH)), "test"))
    status = "failed"
    try:
        stats = pipeline.run()
        status = "complete"
        return stats
    finally:
        fanout.close(status)
        engine.close()


def test_a_batch_the_engine_cannot_score_becomes_a_gap_and_the_run_goes_on(birdnet_model, tmp_path):
    reference = run_pipeline(tmp_path / "ref", KillOnSends(range(0)), max_restarts=3)
    assert reference.windows == 10 and reference.windows_unscored == 0

    stats = run_pipeline(tmp_path, KillOnSends(range(2, 4)), max_restarts=3)
    assert stats.windows == 9 and stats.windows_unscored == 1
    with sqlite3.connect(str(tmp_path / "db.sqlite")) as db:
        gaps = db.execute("SELECT source, start_epoch, seconds, reason FROM gaps").fetchall()
        starts = [row[0] for row in db.execute("SELECT start_utc FROM detections")]
    assert len(gaps) == 1
    source, start, seconds, reason = gaps[0]
    assert source == str(recording(THRUSH))
    assert start == START.timestamp() + 3.0 and seconds == 3.0  # the second 3 s window
    assert reason.startswith("engine failed: engine worker died (exit code -9, SIGKILL)")
    assert starts and not any(start_utc.startswith("2024-05-01T05:00:03") for start_utc in starts)


@pytest.mark.parametrize(
    "max_restarts, words",
    [(3, "not restarting it again: it failed 4 times"), (10, "3 batches in a row could not")],
)
def test_an_engine_that_fails_every_batch_ends_the_run_with_one_line(
    birdnet_model, tmp_path, max_restarts, words
):
    with pytest.raises(EngineError) as failure:
        run_pipeline(tmp_path, KillOnSends(range(1, 100)), max_restarts=max_restarts)
    message = str(failure.value)
    assert words in message and "\n" not in message
    with sqlite3.connect(str(tmp_path / "db.sqlite")) as db:
        assert db.execute("SELECT status FROM runs").fetchall() == [("failed",)]
