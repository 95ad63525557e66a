"""`birdd train distill` end to end on real clips with the real BirdNET as teacher: train a tiny
student for two epochs → ONNX FP32 and int8 with sidecars → the FP32 export re-scored through
the birdd ONNX engine → `birdd --simulate --model student.onnx` on its sidecar alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from birdd_testing import SHARED_AUDIO, SHARED_AUDIO_MISSING, run_birdd

pytest.importorskip("torch", reason="needs the training extra: pip install 'birdd[training]'")

from test_training_system import _data, check_runs_in_simulate  # the same tiny labelled set

from birdd.engines.models.artifact import load_artifact

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
        "--threads", "1", "--verify-windows", "16", timeout=900,
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
    assert results["parity"][0]["max_abs_diff"] <= 1e-3
    facts = results["facts"]
    assert facts["macs_per_window"] * 20 <= BIRDNET_MACS
    assert facts["int8_bytes"] <= 100_000  # the tiny student's budget
    assert {"distill", "BirdNET", "distill int8 (ONNX Runtime)"} == set(results["evaluations"])


def test_student_runs_in_simulate_through_its_sidecar(distilled, tmp_path):
    check_runs_in_simulate(distilled / "student.onnx", tmp_path)
