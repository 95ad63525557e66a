"""The ``gate`` recipe: a bird / no-bird head on BirdNET's embeddings.

It is the head recipe with one output: the same model (``HeadModel``, one class, no BirdNET
prior), loop and export (``head.npz`` weights the daemon applies in numpy, plus an ONNX file),
trained on the windows gate_data.py labels: bird windows of the bird recordings (labelled and
unlabelled, and their padded crops) against every window of the negatives. The daemon uses it
as ``postprocess.gate`` (``--gate``): bird detections are dropped in windows it calls no-bird
(daemon/postprocess/gate.py).

The operating point is chosen on the validation split: the highest threshold that still calls
``recall`` of its bird windows bird (never above 0.5). It is folded into the output's bias, so
the exported gate says bird at 0.5, the daemon's default ``postprocess.gate.threshold``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from birdd.engines.head import HeadWeights, save_head_weights
from birdd.engines.models.artifact import file_sha256, write_sidecar
from birdd.engines.models.labels import Species
from birdd.training.datasets.records import Recording
from birdd.training.datasets.split import write_split
from birdd.training.export.artifacts import common_meta
from birdd.training.export.onnx_head import HEAD_INPUT, HEAD_OUTPUT, write_head
from birdd.training.features.embeddings import FeatureCache, Features
from birdd.training.prepare import Prepared
from birdd.training.recipes.gate_data import (
    BirdWindows,
    GateData,
    bird_columns,
    crop_features,
    gate_windows,
)
from birdd.training.recipes.head import HeadModel, HeadOptions, train_head
from birdd.training.recipes.head_run import head_logits, sigmoid

log = logging.getLogger("birdd.training")

GATE_LABEL = Species("Aves", "Bird", None, True)
GATE_FILE, GATE_WEIGHTS = "gate.onnx", "gate.npz"
DECISION = 0.5  # the exported gate's bird / no-bird boundary (the daemon's default threshold)


@dataclass
class GateOptions:
    head: HeadOptions = field(default_factory=HeadOptions)
    data: GateData = field(default_factory=GateData)
    recall: float = 0.995  # share of validation bird windows the chosen threshold keeps


@dataclass
class GateSets:
    """The gate's windows per split; the test split's windows and padded crops apart."""

    train: BirdWindows
    val: BirdWindows
    test: BirdWindows
    test_crops: BirdWindows


def gate_sets(
    prepared: Prepared,
    unlabelled: Sequence[Recording],
    unlabelled_features: Dict[str, Features],
    crops: Dict[str, Features],
    data: GateData,
) -> GateSets:
    """Unlabelled bird recordings train only; validation and test are the labelled split's."""
    birds = bird_columns(prepared.base.species)
    windows = {**prepared.extraction.features, **unlabelled_features}

    def of(recordings: Sequence[Recording], sources) -> BirdWindows:
        labels, columns = prepared.dataset.labels, prepared.columns
        return gate_windows(recordings, sources, labels, columns, birds, data)

    split = prepared.split
    return GateSets(
        train=of([*split["train"], *unlabelled], [windows, crops]),
        val=of(split["val"], [windows, crops]),
        test=of(split["test"], [windows]),
        test_crops=of(split["test"], [crops]),
    )


def bird_probability(model: HeadModel, windows: BirdWindows) -> np.ndarray:
    return sigmoid(head_logits(model, windows))[:, 0]


def operating_threshold(probability: np.ndarray, bird: np.ndarray, recall: float) -> float:
    """The highest threshold (at most 0.5) that calls at least ``recall`` of the bird windows
    bird."""
    positives = np.sort(probability[bird])
    if not len(positives):
        return DECISION
    allowed_misses = int(np.floor((1.0 - recall) * len(positives)))
    return float(min(DECISION, positives[allowed_misses]))


def shifted(weights: HeadWeights, threshold: float) -> HeadWeights:
    """The gate with ``threshold`` moved to 0.5: its output bias less logit(threshold)."""
    threshold = float(np.clip(threshold, 1e-6, 1 - 1e-6))
    shift = np.float32(np.log(threshold / (1 - threshold)))
    layers = list(weights.layers)
    weight, bias = layers[-1]
    layers[-1] = (weight, (bias - shift).astype(np.float32))
    return HeadWeights(layers, weights.prior_column, weights.prior_scale)


def test_result(probability: np.ndarray, windows: BirdWindows, threshold: float) -> Dict:
    bird = windows.targets[:, 0] >= 1
    called = probability >= threshold
    return {
        "bird_windows": int(bird.sum()),
        "bird_recall": float(called[bird].mean()) if bird.any() else float("nan"),
        "negative_windows": int((~bird).sum()),
        "negatives_rejected": float((~called[~bird]).mean()) if (~bird).any() else float("nan"),
    }


def export_gate(
    weights: HeadWeights, prepared: Prepared, out: Path, base_model: str, name: str, training
) -> Path:
    """gate.onnx + gate.npz + gate.json (``kind: gate``) into ``out``."""
    base = prepared.base
    path = write_head(weights, base.num_classes, out / GATE_FILE)
    save_head_weights(out / GATE_WEIGHTS, weights)
    meta = common_meta(base, name, {GATE_LABEL.label: DECISION}, training)
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


def unlabelled_features(
    cache: FeatureCache, recordings: Sequence[Recording]
) -> Dict[str, Features]:
    if not recordings:
        return {}
    return cache.extract(recordings, "BirdNET features (unlabelled)").features


def run_gate_recipe(
    prepared: Prepared,
    cache: FeatureCache,
    options: GateOptions,
    unlabelled: Sequence[Recording],
    out: Path,
    base_model: str,
    name: str,
) -> List[Path]:
    """Train, choose the threshold on validation, score the test split, export;
    results.json in ``out``. ``cache`` is the feature cache ``prepared`` came from."""
    began = time.monotonic()
    head = options.head
    head.birdnet_prior = False
    extra = unlabelled_features(cache, unlabelled)
    unlabelled = [rec for rec in unlabelled if rec.key in extra]
    split = {**prepared.split, "train": [*prepared.split["train"], *unlabelled]}
    write_split(out / "split.csv", split)
    crops = crop_features(cache, [*prepared.dataset.recordings, *unlabelled], options.data)
    sets = gate_sets(prepared, unlabelled, extra, crops, options.data)
    log.info("gate: training on %d windows, validating on %d", len(sets.train), len(sets.val))
    model, _ = train_head(sets.train, sets.val, head, out / "checkpoint.pt")
    val_probability = bird_probability(model, sets.val)
    threshold = operating_threshold(val_probability, sets.val.targets[:, 0] >= 1, options.recall)
    result = {
        "threshold": threshold,
        "recall_target": options.recall,
        "validation": test_result(val_probability, sets.val, threshold),
        "test": test_result(bird_probability(model, sets.test), sets.test, threshold),
        "test_padded_crops": test_result(
            bird_probability(model, sets.test_crops), sets.test_crops, threshold
        ),
        "windows": {"train": len(sets.train), "val": len(sets.val)},
        "unlabelled": [str(rec.path) for rec in unlabelled],
        "data": asdict(options.data),
    }
    training = {"recipe": "gate", "data_sha256": prepared.data_sha256, "split": "split.csv",
                "seed": head.loop.seed, **result}  # fmt: skip
    weights = shifted(model.export_weights([None]), threshold)
    path = export_gate(weights, prepared, out, base_model, name, training)
    result["seconds"] = round(time.monotonic() - began, 1)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    test = result["test"]
    log.info(
        "gate: threshold %.3f (%.1f %% of validation bird windows); test split: %.3f of %d "
        "bird windows called bird, %.3f of %d negative windows called no-bird; %s",
        threshold, 100 * options.recall, test["bird_recall"], test["bird_windows"],
        test["negatives_rejected"], test["negative_windows"], path,
    )  # fmt: skip
    return [path]
