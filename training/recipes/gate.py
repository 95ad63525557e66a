"""The ``gate`` recipe: a bird / no-bird head on BirdNET's embeddings.

It is the head recipe with one output: the same model (``HeadModel``, one class, no BirdNET
prior), loop and export (``head.npz`` weights the daemon applies in numpy, plus an ONNX file),
trained on the windows of the bird recordings that the teacher filter keeps (positives) and
every window of the negatives. The daemon uses it as ``postprocess.gate`` (``--gate``): bird
detections are dropped in windows it calls no-bird (daemon/postprocess/gate.py).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import numpy as np

from birdd.engines.head import save_head_weights
from birdd.engines.models.artifact import file_sha256, write_sidecar
from birdd.engines.models.labels import Species
from birdd.training.export.artifacts import common_meta
from birdd.training.export.onnx_head import HEAD_INPUT, HEAD_OUTPUT, write_head
from birdd.training.prepare import Prepared
from birdd.training.recipes.head import HeadModel, HeadOptions, train_head
from birdd.training.recipes.head_run import head_logits, sigmoid
from birdd.training.recipes.targets import WindowSet, window_set

log = logging.getLogger("birdd.training")

GATE_LABEL = Species("Aves", "Bird", None, True)
GATE_FILE, GATE_WEIGHTS = "gate.onnx", "gate.npz"


class BirdWindows(WindowSet):
    """Windows with one target: 1 in a bird recording, 0 in a negative."""

    def recording_targets(self) -> np.ndarray:
        return np.array([[0.0 if rec.is_negative else 1.0] for rec in self.recordings], np.float32)


def bird_windows(prepared: Prepared, split: str, teacher_min: float) -> BirdWindows:
    """The split's windows (bird recordings' windows teacher-filtered), bird / no-bird."""
    windows = window_set(
        prepared.split[split],
        prepared.extraction.features,
        prepared.dataset.labels,
        prepared.columns,
        teacher_min,
    )
    bird = (windows.targets >= 1).any(axis=1, keepdims=True).astype(np.float32)
    no_teacher = np.full((len(windows), 1), np.nan, dtype=np.float32)
    return BirdWindows(
        windows.embeddings, no_teacher, bird, windows.recording, windows.recordings, ["bird"]
    )


@dataclass
class GateResult:
    """On the test split: the share of bird windows (teacher-filtered) the gate calls bird,
    and of negative windows it calls no-bird, at ``threshold``."""

    threshold: float
    bird_windows: int
    bird_recall: float
    negative_windows: int
    negatives_rejected: float
    seconds: Dict[str, float]


def test_result(model: HeadModel, test: BirdWindows, threshold: float) -> Dict[str, float]:
    probability = sigmoid(head_logits(model, test))[:, 0]
    bird = test.targets[:, 0] >= 1
    called = probability >= threshold
    return {
        "bird_windows": int(bird.sum()),
        "bird_recall": float(called[bird].mean()) if bird.any() else float("nan"),
        "negative_windows": int((~bird).sum()),
        "negatives_rejected": float((~called[~bird]).mean()) if (~bird).any() else float("nan"),
    }


def train_gate(prepared: Prepared, options: HeadOptions, out: Path) -> HeadModel:
    options.birdnet_prior = False
    train = bird_windows(prepared, "train", options.teacher_min)
    val = bird_windows(prepared, "val", options.teacher_min)
    log.info("gate: training on %d windows, validating on %d", len(train), len(val))
    model, _ = train_head(train, val, options, out / "checkpoint.pt")
    return model


def export_gate(
    model: HeadModel, prepared: Prepared, out: Path, base_model: str, name: str, training: Dict
) -> Path:
    """gate.onnx + gate.npz + gate.json (``kind: gate``) into ``out``."""
    weights = model.export_weights([None])
    base = prepared.base
    path = write_head(weights, base.num_classes, out / GATE_FILE)
    save_head_weights(out / GATE_WEIGHTS, weights)
    meta = common_meta(base, name, {"bird": 0.5}, training)
    meta.update(
        kind="gate",
        format="onnx",
        source="birdd train gate",
        input_name=HEAD_INPUT,
        outputs={"scores": HEAD_OUTPUT},
        head={
            "base_model": base_model,
            "base": base.identity(),
            "embedding_dim": int(weights.layers[0][0].shape[0]),
            "birdnet_prior": False,
            "weights": GATE_WEIGHTS,
            "weights_sha256": file_sha256(out / GATE_WEIGHTS),
            "mode": "replace",
        },
    )
    write_sidecar(path, meta, [GATE_LABEL])
    return path


def run_gate_recipe(
    prepared: Prepared, options: HeadOptions, out: Path, base_model: str, name: str
) -> List[Path]:
    """Train, score the test split, export; results.json in ``out``."""
    began = time.monotonic()
    model = train_gate(prepared, options, out)
    test = bird_windows(prepared, "test", options.teacher_min)
    result = {"threshold": 0.5, **test_result(model, test, 0.5)}
    training = {"recipe": "gate", "data_sha256": prepared.data_sha256, "split": "split.csv",
                "seed": options.loop.seed, "test": result}  # fmt: skip
    path = export_gate(model, prepared, out, base_model, name, training)
    result["seconds"] = round(time.monotonic() - began, 1)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    log.info(
        "gate on the test split: %.3f of %d bird windows called bird, %.3f of %d negative "
        "windows called no-bird; %s",
        result["bird_recall"], result["bird_windows"], result["negatives_rejected"],
        result["negative_windows"], path,
    )  # fmt: skip
    return [path]
