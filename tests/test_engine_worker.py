"""The engine in a worker process: same scores as in-process, restarts after a crash or a hang.

Runs the real BirdNET model (TFLite and ONNX) on real recordings on every machine, so the
process boundary a TensorRT engine on a Jetson relies on is exercised everywhere.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from birdd_testing import THRUSH, model_windows, recording, simulate_rows

from birdd.engines import worker as worker_module
from birdd.engines.errors import EngineError, RuntimeMissingError
from birdd.engines.models.artifact import load_artifact
from birdd.engines.models.modeldir import resolve_model
from birdd.engines.onnx import ONNXConfig
from birdd.engines.registry import create_engine
from birdd.engines.runtime.frames import PROTOCOL
from birdd.engines.tflite import TFLiteConfig
from birdd.engines.worker import WorkerEngine


def start_worker(config, **options) -> WorkerEngine:
    """A loaded WorkerEngine with test-sized timeouts and restart limits."""
    artifact = load_artifact(resolve_model(config.model, config.type))
    engine = WorkerEngine(config, artifact, **options)
    engine.load()
    return engine


CONFIGS = {"tflite": TFLiteConfig, "onnx": ONNXConfig}


@pytest.fixture(scope="module")
def windows(birdnet_model) -> np.ndarray:
    return model_windows(recording(THRUSH))[2:5]


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def engine_type(request, birdnet_model) -> str:
    return request.param


@pytest.fixture(scope="module")
def in_process(engine_type):
    engine = create_engine(CONFIGS[engine_type](batch_size=2))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def expected(in_process, windows):
    return {
        "full": in_process.predict(windows[:2]),
        "partial": in_process.predict(windows[2:3]),
        "embeddings": in_process.embed(windows[:2]),
    }


@pytest.fixture
def worker(engine_type):
    engine = start_worker(CONFIGS[engine_type](batch_size=2), timeout_s=10)
    yield engine
    engine.close()


def test_the_worker_scores_like_the_engine_in_process(worker, windows, expected):
    full = worker.predict(windows[:2])
    partial = worker.predict(windows[2:3])
    assert full.shape == (2, 6522) and partial.shape == (1, 6522)
    np.testing.assert_allclose(full, expected["full"], atol=1e-5)
    np.testing.assert_allclose(partial, expected["partial"], atol=1e-5)
    np.testing.assert_allclose(worker.embed(windows[:2]), expected["embeddings"], atol=1e-5)
    assert worker.worker_info["pid"] == worker.pid != os.getpid()
    assert worker.worker_info["python"] == "%d.%d.%d" % sys.version_info[:3]
    with pytest.raises(EngineError, match="batch of 3 > batch_size 2"):
        worker.predict(windows)
    assert worker.restarts == 0


def test_a_worker_killed_between_batches_is_restarted(worker, windows, expected):
    worker.predict(windows[:2])
    first = worker.pid
    os.kill(first, signal.SIGKILL)
    np.testing.assert_allclose(worker.predict(windows[:2]), expected["full"], atol=1e-5)
    assert worker.restarts == 1 and worker.pid != first


def test_a_worker_killed_mid_batch_is_restarted_and_the_batch_scored(worker, windows, expected):
    killed = []

    def kill_once(pid: int) -> None:  # runs once the batch is sent, before the reply is read
        if not killed:
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)

    worker._on_sent = kill_once
    np.testing.assert_allclose(worker.predict(windows[2:3]), expected["partial"], atol=1e-5)
    assert killed and worker.restarts == 1 and worker.pid != killed[0]


def test_a_stuck_worker_times_out_and_is_replaced(engine_type, windows, expected):
    engine = start_worker(CONFIGS[engine_type](batch_size=2), timeout_s=1.0)
    try:
        stuck = engine.pid
        os.kill(stuck, signal.SIGSTOP)
        started = time.monotonic()
        np.testing.assert_allclose(engine.predict(windows[:2]), expected["full"], atol=1e-5)
        assert time.monotonic() - started < 8
        assert engine.restarts == 1 and engine.pid != stuck
    finally:
        engine.close()


def test_a_batch_that_kills_every_worker_gives_one_line_then_recovers(engine_type, windows):
    engine = start_worker(CONFIGS[engine_type](batch_size=2), timeout_s=10)
    try:
        engine._on_sent = lambda pid: os.kill(pid, signal.SIGKILL)
        with pytest.raises(EngineError) as failure:
            engine.predict(windows[:2])
        message = str(failure.value)
        assert "\n" not in message
        assert message.startswith(
            "engine worker died (exit code -9, SIGKILL) while scoring a batch:"
        )
        assert engine.restarts == 1
        engine._on_sent = None
        assert engine.predict(windows[:2]).shape == (2, 6522)
        assert engine.restarts == 2
    finally:
        engine.close()


def test_restarts_are_bounded(windows):
    engine = start_worker(TFLiteConfig(batch_size=2), max_restarts=1)
    try:
        os.kill(engine.pid, signal.SIGKILL)
        engine.predict(windows[:2])
        os.kill(engine.pid, signal.SIGKILL)
        with pytest.raises(
            EngineError, match=r"died .* not restarting it again: it failed 2 times"
        ):
            engine.predict(windows[:2])
        assert engine.restarts == 1
    finally:
        engine.close()


def test_close_ends_the_worker(birdnet_model):
    engine = start_worker(TFLiteConfig(batch_size=1))
    child = engine._child
    engine.close()
    assert child is not None and child.process.returncode == 0
    with pytest.raises(EngineError, match="used before load"):
        engine.predict(np.zeros((1, 144000), np.float32))


def artifact_at(tmp_path, engine_type, content=None):
    real = load_artifact(resolve_model("birdnet", engine_type))
    path = tmp_path / f"model.{engine_type}"
    if content is not None:
        path.write_bytes(content)
    return dataclasses.replace(real, path=path)


@pytest.mark.parametrize("content", [None, b"not a model at all"], ids=["missing", "corrupt"])
def test_a_model_the_worker_cannot_load_is_one_line(tmp_path, engine_type, content):
    artifact = artifact_at(tmp_path, engine_type, content)
    engine = WorkerEngine(CONFIGS[engine_type](batch_size=1), artifact, timeout_s=10)
    started = time.monotonic()
    with pytest.raises(EngineError) as failure:
        engine.load()
    assert time.monotonic() - started < 10
    message = str(failure.value)
    assert "\n" not in message and str(artifact.path) in message
    assert message.startswith(f"cannot load {'TFLite' if engine_type == 'tflite' else 'ONNX'}")
    engine.close()


def test_an_interpreter_without_numpy_names_what_to_install(birdnet_model, tmp_path):
    python = tmp_path / "python-without-site"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    python.chmod(0o755)
    artifact = load_artifact(resolve_model("birdnet", "tflite"))
    engine = WorkerEngine(TFLiteConfig(batch_size=1), artifact, python=str(python))
    with pytest.raises(
        RuntimeMissingError, match=r"interpreter .* has no numpy .*install numpy"
    ) as err:
        engine.load()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("python", "message"),
    [
        ("/nonexistent/python3", r"cannot start the engine worker with /nonexistent/python3"),
        ("/bin/false", r"engine worker \(/bin/false\) died \(exit code 1\) while loading"),
    ],
)
def test_an_unusable_interpreter_is_one_line(birdnet_model, python, message):
    artifact = load_artifact(resolve_model("birdnet", "tflite"))
    engine = WorkerEngine(TFLiteConfig(batch_size=1), artifact, python=python)
    with pytest.raises(EngineError, match=message) as failure:
        engine.load()
    assert "\n" not in str(failure.value)


BLOCK_BIRDD = """
import sys


class NoBirdd:
    def find_spec(self, name, path=None, target=None):
        if name == "birdd" or name.startswith("birdd."):
            raise ModuleNotFoundError("birdd is not installed for this interpreter")


sys.meta_path.insert(0, NoBirdd())
"""


def test_the_worker_runs_under_an_interpreter_without_birdd(
    tmp_path, engine_type, windows, expected
):
    """What a JetPack's system Python is: numpy and the runtime, but no birdd."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_BIRDD)
    python = tmp_path / "python-without-birdd"
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{site}" exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    blocked = subprocess.run(
        [str(python), "-c", "import birdd.engines"], capture_output=True, text=True, timeout=60
    )
    assert "birdd is not installed for this interpreter" in blocked.stderr
    engine = start_worker(CONFIGS[engine_type](batch_size=2), python=str(python), timeout_s=10)
    try:
        np.testing.assert_allclose(engine.predict(windows[:2]), expected["full"], atol=1e-5)
    finally:
        engine.close()


def test_a_worker_of_another_protocol_is_refused_in_one_line(birdnet_model, monkeypatch):
    """A worker started from files newer than the running birdd (upgraded in place)."""
    monkeypatch.setattr(worker_module, "PROTOCOL", PROTOCOL + 1)
    artifact = load_artifact(resolve_model("birdnet", "tflite"))
    engine = WorkerEngine(TFLiteConfig(batch_size=1), artifact, timeout_s=10)
    with pytest.raises(EngineError) as failure:
        engine.load()
    message = str(failure.value)
    assert "\n" not in message and engine.pid is None
    assert message.endswith(
        f"speaks protocol {PROTOCOL} but this birdd speaks {PROTOCOL + 1}: birdd was upgraded "
        "while running; restart it"
    )


def test_the_worker_keeps_the_xnnpack_banner_off_its_stderr(windows):
    """TFLite prints it from C++ when it first allocates tensors (see runtime/native_log.py)."""
    engine = start_worker(TFLiteConfig(batch_size=2))
    child = engine._child
    engine.predict(windows[:2])
    engine.close()  # the child exits: all it wrote to stderr has been read
    assert child is not None and child.process.returncode == 0
    lines = list(child.stderr_lines)
    assert not [line for line in lines if "XNNPACK delegate" in line], lines


def test_engine_python_in_the_config_runs_the_real_pipeline_in_a_worker(birdnet_model, tmp_path):
    config = tmp_path / "birdd.yaml"
    config.write_text(f"engine:\n  type: tflite\n  python: {sys.executable}\n")
    result, rows = simulate_rows(recording(THRUSH), tmp_path / "db.sqlite", "--config", str(config))
    assert result.returncode == 0, result.stderr
    thrush = [row for row in rows if row["species"]["scientific"] == "Hylocichla mustelina"]
    assert len(thrush) == 9  # every window but the last, as in-process


def test_create_engine_uses_a_worker_when_python_is_set(birdnet_model):
    engine = create_engine(TFLiteConfig(batch_size=1, python=sys.executable))
    try:
        assert isinstance(engine, WorkerEngine) and engine.pid != os.getpid()
    finally:
        engine.close()
