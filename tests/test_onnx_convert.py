"""The BirdNET → ONNX conversion: what it installed, and its parts that run in seconds.

The conversion itself (tf2onnx in a virtualenv with TensorFlow) takes minutes and runs once in
tests/install.sh; these tests check its result and fail when it is missing.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

from birdd.engines.errors import EngineError
from birdd.engines.models.artifact import load_artifact
from birdd.engines.models.birdnet_rewrite import rewrite_birdnet
from birdd.engines.models.convert import (
    ONNX_NAME,
    _stream,
    _tf2onnx_progress,
    check_parity,
    probe_windows,
)
from birdd.engines.models.modeldir import models_dir, read_manifest, resolve_model

CONVERT = "python3 -m birdd.daemon models convert birdnet --to onnx"


@pytest.fixture(scope="module")
def folder(birdnet_model):
    return models_dir() / "birdnet"


@pytest.fixture(scope="module")
def converted(folder):
    if "onnx" not in read_manifest(folder).get("classifier", {}):
        pytest.fail(f"BirdNET has no ONNX model in {folder}; run '{CONVERT}' (tests/install.sh)")
    return folder


def test_the_onnx_model_is_registered_with_a_sidecar_like_the_tflite_one(converted):
    assert read_manifest(converted)["classifier"]["onnx"] == ONNX_NAME
    onnx_model = load_artifact(resolve_model("birdnet", "onnx"))
    tflite = load_artifact(resolve_model("birdnet", "tflite"))
    assert onnx_model.format == "onnx" and onnx_model.path.name == ONNX_NAME
    assert (
        onnx_model.outputs
        == tflite.outputs
        == {
            "scores": "Identity",
            "embeddings": "model/GLOBAL_AVG_POOL/Mean",
        }
    )
    assert onnx_model.species == tflite.species
    for field in ("name", "version", "licence", "sample_rate", "window_samples", "activation"):
        assert getattr(onnx_model, field) == getattr(tflite, field)
    assert onnx_model.source.startswith(f"converted from {tflite.path.name}")


def test_the_onnx_model_has_a_dynamic_batch_and_both_outputs(converted):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(converted / ONNX_NAME))
    batch, samples = session.get_inputs()[0].shape
    assert isinstance(batch, str) and samples == 144000  # a named (dynamic) batch dimension
    assert [o.shape[1] for o in session.get_outputs()] == [6522, 1024]


def test_check_parity_passes_the_installed_pair(converted):
    tflite = resolve_model("birdnet", "tflite")
    logits, embeddings = check_parity(tflite, converted / ONNX_NAME, lambda line: None)
    assert logits < 1e-3 and embeddings < 1e-3


def empty_tensors(model_bytes: bytes) -> dict:
    """Name → whether its buffer has a data vector, for every tensor of shape [0]."""
    model = schema.ModelT.InitFromPackedBuf(model_bytes, 0)
    return {
        t.name: model.buffers[t.buffer].data is not None
        for t in model.subgraphs[0].tensors
        if list(t.shape) == [0]
    }


def test_the_rewrite_keeps_empty_constants_for_tf2onnx(folder):
    """tf2onnx reads a buffer without a data vector as a graph input, not as a constant: every
    shape-[0] constant the rewrite keeps must keep its (empty) data vector."""
    original = (folder / read_manifest(folder)["classifier_reference"]["tflite"]).read_bytes()
    assert empty_tensors(original)[b"model/MEL_SPEC1/stft/frame/Reshape/shape_1"] is True
    assert all(empty_tensors(rewrite_birdnet(original)).values())


def test_probe_windows_are_seeded_and_include_a_padded_one():
    windows = probe_windows(144000)
    assert windows.shape == (4, 144000) and windows.dtype == np.float32
    np.testing.assert_array_equal(windows, probe_windows(144000))
    assert not windows[3, 72000:].any() and windows[3, :72000].any()


def test_tf2onnx_progress_keeps_its_own_lines_only():
    line = "2026-11-23 14:23:10,678 - INFO - Successfully converted TensorFlow model"
    assert _tf2onnx_progress(line) == "tf2onnx: Successfully converted TensorFlow model"
    assert _tf2onnx_progress("I0000 port.cc:153] oneDNN custom operations are on.") is None
    assert _tf2onnx_progress("2026-11-23 14:23:10,675 - INFO - ") is None


def test_a_failing_step_is_one_line_with_its_last_output():
    shown = []
    command = [sys.executable, "-c", "print('step 1'); raise SystemExit('no wheel for you')"]
    with pytest.raises(EngineError, match=r"^pip failed \(exit 1\): no wheel for you$"):
        _stream(command, shown.append, lambda line: line or None, "pip")
    assert shown == ["step 1", "no wheel for you"]
