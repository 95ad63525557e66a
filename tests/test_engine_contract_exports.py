"""The engine contract for the files ``birdd train`` exports: the head alone (append mode on
BirdNET), BirdNET + head as one ONNX graph, the student on ONNX Runtime and on TFLite (FP32 and
int8). Each runs through its sidecar alone on the engine its suffix names and must give the
classes its sidecar declares, finite logits whose confidences lie in [0, 1], the same rows at
batch 1 and 4, and (FP32) PyTorch's / numpy's logits within 1e-3.

The files are exported from weights made here in seconds (a seeded untrained student, a random
head on BirdNET's real embeddings), not from a training run: the contract is the exporters'
and the engines', whatever the weights learnt. The student's TFLite files need the TensorFlow
conversion virtualenv (tests/install.sh makes it when it converts BirdNET): skipped without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import pytest
from birdd_testing import ENGINE_RECORDINGS, model_windows, recording

pytest.importorskip("torch", reason="needs the training extra: pip install 'birdd[training]'")

import torch

from birdd.daemon.postprocess.scoring import confidences
from birdd.engines.head import HeadWeights, apply_head
from birdd.engines.models.artifact import load_artifact
from birdd.engines.models.labels import Species
from birdd.engines.models.modeldir import resolve_model
from birdd.training.export.artifacts import export_head, export_merged
from birdd.training.export.student import export_student, quantise_int8
from birdd.training.export.tflite_student import converter_python, export_tflite
from birdd.training.models.student import new_student
from birdd.training.verify import open_engine

FP32_TOLERANCE = 1e-3
WOODPECKER = Species("Melanerpes portoricensis", "Puerto Rican Woodpecker", None, True)
CUSTOM = Species("Custom sound", "Custom sound", None, False)  # a class BirdNET lacks
Reference = Callable[[np.ndarray], np.ndarray]


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    """3 s windows from t = 0 of the engine recordings, the last partial ones zero-padded."""
    return model_windows(*(recording(name) for name in ENGINE_RECORDINGS))[::2]


def _birdnet_onnx(windows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    engine = open_engine("onnx", "birdnet", 8)
    try:
        outputs = [engine.infer(windows[i : i + 8]) for i in range(0, len(windows), 8)]
    finally:
        engine.close()
    return np.concatenate([o.scores for o in outputs]), np.concatenate(
        [o.embeddings for o in outputs]
    )


def _head_exports(out: Path, windows: np.ndarray) -> Dict[str, Tuple[Path, Reference]]:
    """A random linear head with BirdNET's prior for the woodpecker, exported both ways."""
    base_onnx = load_artifact(resolve_model("birdnet", "onnx"))
    rng = np.random.default_rng(3)
    column = [sp.label for sp in base_onnx.species].index(WOODPECKER.label)
    weights = HeadWeights(
        layers=[
            (rng.normal(0, 0.05, (1024, 2)).astype(np.float32), np.array([-1, 0.5], np.float32))
        ],
        prior_column=np.array([column, -1]),
        prior_scale=np.array([0.5, 0.0], np.float32),
    )
    species, training = [WOODPECKER, CUSTOM], {"data_sha256": "contract-test"}
    head = export_head(out, weights, species, base_onnx, "birdnet", "contract_head", {}, training)
    merged = export_merged(out, weights, species, base_onnx, "contract_head", {}, training)
    logits, embeddings = _birdnet_onnx(windows)
    expected = apply_head(weights, embeddings, logits)
    return {
        "head.onnx": (head, lambda _: expected),
        "birdnet_head.onnx": (merged, lambda _: expected),
    }


def _student_exports(out: Path, windows: np.ndarray) -> Dict[str, Tuple[Path, Reference]]:
    torch.manual_seed(5)
    model = new_student("tiny", 2)
    for norm in [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]:
        norm.running_mean.uniform_(-0.5, 0.5)  # statistics of a trained net: folding is tested
        norm.running_var.uniform_(0.5, 2.0)
    model.norm.running_mean.fill_(-9.0)
    model.norm.running_var.fill_(16.0)
    model.eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(windows)).numpy()
    species, samples, extra = [WOODPECKER, CUSTOM], windows.shape[1], {"training": {}}
    fp32 = export_student(model, out / "student.onnx", species, "contract_student", samples, extra)
    int8 = quantise_int8(fp32, out / "student_int8.onnx", model, species, "s8", windows, extra)
    files = {"student.onnx": (fp32, lambda _: expected), "student_int8.onnx": (int8, None)}
    python = converter_python(create=False)
    if python is not None:
        tflite = export_tflite(
            model, out, species, "contract_student", samples, extra, python, windows
        )
        files.update(
            {
                "student_tflite.tflite": (tflite[0], lambda _: expected),
                "student_tflite_int8.tflite": (tflite[1], None),
            }
        )
    return files


@pytest.fixture(scope="module")
def exports(birdnet_model, windows, tmp_path_factory) -> Dict[str, Tuple[Path, Reference]]:
    out = tmp_path_factory.mktemp("exports")
    return {**_head_exports(out, windows), **_student_exports(out, windows)}


def _scores(path: Path, windows: np.ndarray, batch: int) -> Tuple[np.ndarray, List[str], str]:
    engine = open_engine(path.suffix.lstrip("."), str(path), batch)
    try:
        rows = [engine.predict(windows[i : i + batch]) for i in range(0, len(windows), batch)]
        return (
            np.concatenate(rows),
            [sp.label for sp in engine.artifact.species],
            engine.artifact.activation,
        )
    finally:
        engine.close()


FILES = [
    "head.onnx", "birdnet_head.onnx", "student.onnx", "student_int8.onnx", "student_tflite.tflite",
    "student_tflite_int8.tflite",
]  # fmt: skip


@pytest.mark.parametrize("name", FILES)
def test_an_exported_model_keeps_the_engine_contract(name, exports, windows):
    if name not in exports:
        pytest.skip("no TensorFlow conversion virtualenv here: the student's TFLite files need it")
    path, reference = exports[name]
    sidecar = [sp.label for sp in load_artifact(path).species]
    scores, labels, activation = _scores(path, windows, 4)
    assert scores.shape == (len(windows), len(labels)) and np.isfinite(scores).all()
    if load_artifact(path).kind == "head":  # append: BirdNET's classes, then the new one
        assert len(labels) == 6523 and labels[-1] == CUSTOM.label and WOODPECKER.label in labels
        scores = scores[:, [labels.index(label) for label in sidecar]]
    else:
        assert labels == sidecar
    confidence = confidences(scores, activation, 1.0)
    assert ((confidence >= 0) & (confidence <= 1)).all()
    single, _, _ = _scores(path, windows, 1)
    single = single[:, [labels.index(label) for label in sidecar]]
    np.testing.assert_allclose(single, scores, atol=1e-4)
    if reference is not None:
        assert np.abs(scores - reference(windows)).max() <= FP32_TOLERANCE
