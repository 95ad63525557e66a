"""`birdd train distill` end to end on real clips with the real BirdNET as teacher: train a tiny
student for two epochs and one of quantisation-aware training → ONNX and TFLite, FP32 and int8,
with sidecars → the FP32 exports re-scored through the birdd ONNX and TFLite engines → `birdd
--simulate --model FILE` on its sidecar alone. The TFLite files need the TensorFlow conversion
virtualenv (tests/install.sh makes it): without it the run warns and the TFLite checks skip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from birdd_testing import SHARED_AUDIO, SHARED_AUDIO_MISSING, run_birdd

pytest.importorskip("torch", reason="needs the training extra: pip install 'birdd[training]'")

from test_training_system import _data, check_runs_in_simulate  # the same tiny labelled set

from birdd.engines.models.artifact import load_artifact
from birdd.training.export.tflite_student import FP32_FILE, INT8_FILE, converter_python

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(not (SHARED_AUDIO / "training").is_dir(), reason=SHARED_AUDIO_MISSING),
]
BIRDNET_MACS = 481_605_984  # BirdNET V2.4's ONNX conversion, counted by training/models/flops


@pytest.fixture(scope="module")
def distilled(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("distill")
    data = _data(root / "data")
    out = root / "out"
    result = run_birdd(
        "train", "distill", str(data), "--negatives", str(data / "negatives"),
        "--out", str(out), "--cache", str(root / "cache"), "--size", "tiny", "--epochs", "2",
        "--qat-epochs", "1", "--threads", "1", "--verify-windows", "16", timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_exports_carry_sidecars_and_match_pytorch(distilled):
    fp32 = load_artifact(distilled / "student.onnx")
    int8 = load_artifact(distilled / "student_int8.onnx")
    for artifact in (fp32, int8):
        assert artifact.kind == "classifier" and artifact.activation == "sigmoid"
        assert (artifact.sample_rate, artifact.window_samples) == (48000, 144000)
        assert artifact.frontend["type"] == "birdd.dft-mel/1"
        assert len(artifact.species) == 2
    results = json.loads((distilled / "results.json").read_text())
    assert all(p["max_abs_diff"] <= 1e-3 for p in results["parity"]), results["parity"]
    facts = results["facts"]
    assert facts["macs_per_window"] * 20 <= BIRDNET_MACS
    assert facts["int8_bytes"] <= 100_000  # the tiny student's budget
    runtimes = ["ONNX Runtime"] + (["TFLite"] if converter_python(create=False) else [])
    evaluations = {"distill", "BirdNET", *(f"distill int8 ({r})" for r in runtimes)}
    evaluations |= {
        "distill int8 before QAT (ONNX Runtime)", "distill after QAT (FP32)",
        "distill int8 after QAT, recalibrated (ONNX Runtime)",
    }  # fmt: skip
    assert evaluations == set(results["evaluations"])
    assert set(facts["int8_ap_drop"]) == set(runtimes)
    assert len(facts["qat_history"]["val_score"]) == 1


def test_tflite_exports_carry_sidecars_and_match_pytorch(distilled):
    if converter_python(create=False) is None:
        pytest.skip("no TensorFlow conversion virtualenv here (tests/install.sh makes it)")
    results = json.loads((distilled / "results.json").read_text())
    assert [p["engine"] for p in results["parity"]] == ["onnx", "tflite"]
    for name in (FP32_FILE, INT8_FILE):
        artifact = load_artifact(distilled / name)
        assert artifact.format == "tflite" and artifact.frontend["type"] == "birdd.dft-mel/1"
        assert len(artifact.species) == 2
    assert results["facts"]["tflite_int8_bytes"] <= 100_000


@pytest.mark.parametrize("name", ["student.onnx", FP32_FILE])
def test_student_runs_in_simulate_through_its_sidecar(distilled, tmp_path, name):
    if not (distilled / name).is_file():
        pytest.skip(f"no {name}: no TensorFlow conversion virtualenv here")
    check_runs_in_simulate(distilled / name, tmp_path)
