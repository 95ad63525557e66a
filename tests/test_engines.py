"""The TFLite engine on the real BirdNET V2.4 model, and the engine/artifact refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from birdd_testing import THRUSH, model_windows, recording, run_birdd

from birdd.engines.errors import EngineError, RuntimeMissingError
from birdd.engines.models.artifact import load_artifact, sidecar_path, upgrade_sidecar
from birdd.engines.registry import create_engine
from birdd.engines.runtime.native_log import DELEGATE_BANNER
from birdd.engines.tflite import TFLiteConfig


@pytest.fixture(scope="module")
def thrush_windows(birdnet_model) -> np.ndarray:
    """The thrush recording's windows at 6, 9 and 12 s: the Wood Thrush tops each (> 0.99)."""
    return model_windows(recording(THRUSH))[2:5]


def test_a_partial_batch_is_padded_and_scores_like_a_full_one(thrush_windows):
    engine = create_engine(TFLiteConfig(batch_size=2))
    full = engine.predict(thrush_windows[:2])
    alone = engine.predict(thrush_windows[2:3])
    single = create_engine(TFLiteConfig(batch_size=1))
    assert alone.shape == (1, 6522)
    np.testing.assert_allclose(alone[0], single.predict(thrush_windows[2:3])[0], atol=1e-4)
    np.testing.assert_allclose(full[1], single.predict(thrush_windows[1:2])[0], atol=1e-4)
    thrush = engine.artifact.species.index(
        next(s for s in engine.artifact.species if s.scientific == "Hylocichla mustelina")
    )
    assert (full.argmax(axis=1) == thrush).all() and alone.argmax() == thrush
    with pytest.raises(EngineError, match="batch of 3 > batch_size 2"):
        engine.predict(thrush_windows)


def test_embeddings_come_from_the_same_model(thrush_windows):
    engine = create_engine(TFLiteConfig(batch_size=2))
    embeddings = engine.embed(thrush_windows[:2])
    assert embeddings.shape == (2, 1024) and np.isfinite(embeddings).all()


def test_batch_size_defaults_by_mode():
    assert TFLiteConfig().for_mode(live=True).batch_size == 1
    assert TFLiteConfig().for_mode(live=False).batch_size == 2
    assert TFLiteConfig(batch_size=8).for_mode(live=True).batch_size == 8


@pytest.mark.parametrize(
    "flags",
    [(), ("--lat", "42.5", "--lon", "-76.5", "--week", "20")],
    ids=["classifier", "with-the-location-model"],
)
def test_a_quiet_run_prints_no_tflite_banner(birdnet_model, tmp_path, flags):
    """TFLite's C++ logger prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
    on stderr when an interpreter first allocates its tensors; -q means warnings only."""
    db = str(tmp_path / "db.sqlite")
    result = run_birdd("--simulate", str(recording(THRUSH)), "-q", "--db", db, *flags)
    assert result.returncode == 0, result.stderr
    assert "XNNPACK" not in result.stderr, result.stderr


DROPPING_THE_BANNER = """
import os, sys
from birdd.engines.runtime.native_log import DELEGATE_BANNER, without_delegate_banner
os.write(2, b"before\\n")
with without_delegate_banner():
    os.write(2, b"a runtime error line\\n" + DELEGATE_BANNER + b"\\n")
    sys.stderr.write("a line from Python\\n")
    os.write(2, b"last, unterminated")
os.write(2, b" and after\\n")
"""


def test_dropping_the_banner_keeps_everything_else_on_stderr_in_order():
    result = subprocess.run(
        [sys.executable, "-c", DROPPING_THE_BANNER], capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert DELEGATE_BANNER not in result.stderr
    assert result.stderr == (
        b"before\na runtime error line\na line from Python\nlast, unterminated and after\n"
    )


def test_a_missing_runtime_names_the_extra_to_install(birdnet_model):
    pytest.importorskip("ai_edge_litert")
    try:
        import tflite_runtime  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.fail("this check needs tflite-runtime to be absent")
    with pytest.raises(RuntimeMissingError, match=r"pip install 'birdd\[tflite-runtime\]'"):
        create_engine(TFLiteConfig(runtime="tflite-runtime"))


def copy_with_sidecar(real: Path, tmp_path: Path, **changes) -> Path:
    """A link to the installed model ``real`` beside a copy of its sidecar with ``changes``."""
    model = tmp_path / "model.tflite"
    model.symlink_to(real)
    meta = json.loads(sidecar_path(real).read_text())
    meta.update(changes)
    sidecar_path(model).write_text(json.dumps(meta))
    return model


def test_a_sidecar_with_the_wrong_window_is_refused(birdnet_model, tmp_path):
    model = copy_with_sidecar(
        birdnet_model, tmp_path, window_samples=96000, sample_rate=32000, input_shape=[-1, 96000]
    )
    with pytest.raises(EngineError, match=r"takes input \[1, 144000\].*sidecar says"):
        create_engine(TFLiteConfig(model=str(model)))


@pytest.mark.parametrize("keep", [(), ("window_s",), ("window_s", "input_shape", "input_dtype")])
def test_a_sidecar_of_an_older_birdd_is_brought_up_to_date(birdnet_model, tmp_path, keep):
    model = copy_with_sidecar(birdnet_model, tmp_path)
    meta = json.loads(sidecar_path(model).read_text())
    added = {"window_s": 3.0, "input_shape": [-1, 144000], "input_dtype": "float32"}
    old = {key: value for key, value in meta.items() if key not in added or key in keep}
    sidecar_path(model).write_text(json.dumps(old))
    assert upgrade_sidecar(sidecar_path(model)) is (len(keep) < len(added))
    assert upgrade_sidecar(sidecar_path(model)) is False
    assert json.loads(sidecar_path(model).read_text()) == dict(old, **added)
    assert load_artifact(model).window_s == 3.0


@pytest.mark.parametrize(
    "changes, words",
    [
        (
            {"sample_rate": 44100},
            "window_samples 144000 is not window_s 3 s at sample_rate 44100 Hz (132300)",
        ),
        (
            {"window_s": 2.0},
            "window_samples 144000 is not window_s 2 s at sample_rate 48000 Hz (96000)",
        ),
        ({"window_s": "three"}, "window_s='three' is not a number"),
        ({"input_shape": [-1, 96000]}, "input_shape [-1, 96000] is not [batch, window_samples]"),
        ({"input_shape": [0, 144000]}, "input_shape [0, 144000] is not [batch, window_samples]"),
        ({"input_shape": "any"}, "input_shape 'any' is not [batch, window_samples]"),
        ({"input_dtype": "int8"}, "input_dtype='int8', allowed: float32"),
    ],
)
def test_a_sidecar_that_disagrees_with_itself_is_refused(birdnet_model, tmp_path, changes, words):
    model = copy_with_sidecar(birdnet_model, tmp_path, **changes)
    with pytest.raises(EngineError) as failure:
        create_engine(TFLiteConfig(model=str(model)))
    assert words in str(failure.value) and "\n" not in str(failure.value)


def test_a_location_sidecar_is_left_as_it_is(tmp_path):
    side = tmp_path / "meta.json"
    body = {"schema": "birdd.model/1", "kind": "location", "name": "m"}
    side.write_text(json.dumps(body))
    assert upgrade_sidecar(side) is False and json.loads(side.read_text()) == body


def test_a_sidecar_of_another_format_is_refused(birdnet_model, tmp_path):
    model = copy_with_sidecar(birdnet_model, tmp_path, format="onnx")
    with pytest.raises(EngineError, match=r"is in onnx format but engine\.type is tflite"):
        create_engine(TFLiteConfig(model=str(model)))


def test_an_unknown_installed_model_name():
    with pytest.raises(EngineError, match=r"not installed.*birdd models install perch"):
        create_engine(TFLiteConfig(model="perch"))


@pytest.mark.system  # starts birdd in a fresh process
def test_birdd_engines_lists_what_is_usable_here():
    result = run_birdd("engines")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "usable" in lines["tflite"] and "ai_edge_litert" in lines["tflite"]
    assert "usable" in lines["onnx"] and "CPUExecutionProvider" in lines["onnx"]
