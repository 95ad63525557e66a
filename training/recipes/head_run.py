"""``birdd train head`` from prepared features to exported, verified files and a report."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from birdd.engines.models.artifact import load_artifact
from birdd.engines.models.labels import Species
from birdd.engines.models.modeldir import resolve_model
from birdd.training.export.artifacts import export_head, export_merged
from birdd.training.features.audio import recording_windows
from birdd.training.loop import History
from birdd.training.prepare import Prepared
from birdd.training.recipes.head import (
    HeadModel,
    HeadOptions,
    evaluation_targets,
    fall_back_to_birdnet,
    predict_logits,
    prior_input,
    recording_scores,
    train_head,
)
from birdd.training.recipes.targets import WindowSet, window_set
from birdd.training.report.metrics import ClassMetrics, best_threshold, class_metrics, macro
from birdd.training.verify import Parity, check_export

log = logging.getLogger("birdd.training")


# The same head trained without one of its parts, to measure what each part adds.
ABLATIONS = {
    "head, no teacher filter": {"teacher_min": 0.0},
    "head, no BirdNET prior": {"birdnet_prior": False},
    "head, no fallback to BirdNET": {"fallback": False},
}


def head_logits(model: HeadModel, windows: WindowSet) -> np.ndarray:
    return predict_logits(model, windows.embeddings, prior_input(windows))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


@dataclass
class Evaluation:
    """A model's scores on the test split, per recording (max over its windows)."""

    name: str
    probabilities: np.ndarray  # [R, K]
    classes: List[ClassMetrics]
    macro: Dict[str, float]


@dataclass
class HeadRun:
    options: HeadOptions
    labels: List[str]
    prepared: Prepared
    history: History
    truth: np.ndarray  # [R, K] test targets (NaN: background species, ignored)
    evaluations: List[Evaluation]  # the head, BirdNET, the head without teacher filtering
    thresholds: Dict[str, float]
    negatives: Dict[str, int]  # model → test negatives with a positive
    model: HeadModel
    files: List[Path] = field(default_factory=list)
    parity: List[Parity] = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=dict)


def evaluate(name: str, windows: WindowSet, logits: np.ndarray, truth: np.ndarray) -> Evaluation:
    probabilities = sigmoid(recording_scores(logits, windows))
    metrics = class_metrics(windows.labels, truth, probabilities)
    return Evaluation(name, probabilities, metrics, macro(metrics))


def suggest_thresholds(model: HeadModel, val: WindowSet, labels: List[str]) -> Dict[str, float]:
    """Per class, the best-F1 threshold on the validation split, never below 0.5 (a lower
    one would trade the noise guarantee for recall); 0.5 without validation positives."""
    truth = evaluation_targets(val)
    probabilities = sigmoid(recording_scores(head_logits(model, val), val))
    thresholds = {}
    for k, label in enumerate(labels):
        has_positives = np.nansum(truth[:, k] >= 1) > 0
        best = best_threshold(truth[:, k], probabilities[:, k], floor=0.5).threshold
        thresholds[label] = round(float(best if has_positives else 0.5), 4)
    return thresholds


def negatives_fired(windows: WindowSet, probabilities: np.ndarray, thresholds) -> int:
    """Negative recordings where any class reaches its threshold."""
    negative = np.array([rec.is_negative for rec in windows.recordings])
    fired = (probabilities >= np.asarray(thresholds)[None, :]).any(axis=1)
    return int((fired & negative).sum())


def split_windows(prepared: Prepared, name: str, teacher_min: float) -> WindowSet:
    return window_set(
        prepared.split[name],
        prepared.extraction.features,
        prepared.dataset.labels,
        prepared.columns,
        teacher_min,
    )


def train_on_split(prepared: Prepared, options: HeadOptions, checkpoint: Optional[Path]):
    train = split_windows(prepared, "train", options.teacher_min)
    val = split_windows(prepared, "val", options.teacher_min)
    log.info("training on %d windows, validating on %d", len(train), len(val))
    model, history = train_head(train, val, options, checkpoint)
    if options.fallback and options.birdnet_prior:
        kept = fall_back_to_birdnet(model, split_windows(prepared, "val", 0.0))
        log.info("%d of %d classes keep BirdNET's ranking (no gain on validation)",
                 len(kept), len(prepared.dataset.labels))  # fmt: skip
    return model, history, val


def birdnet_truth(truth: np.ndarray, prepared: Prepared) -> np.ndarray:
    """The truth BirdNET is measured against: a class BirdNET lacks is left out (NaN)."""
    lacking = [k for k, column in enumerate(prepared.columns) if column is None]
    restricted = truth.copy()
    restricted[:, lacking] = np.nan
    return restricted


def birdnet_logits(windows: WindowSet) -> np.ndarray:
    """The teacher's logits; a class BirdNET lacks scores nothing."""
    return np.nan_to_num(windows.teacher, nan=-60.0)


def train_and_evaluate(prepared: Prepared, options: HeadOptions, out: Path) -> HeadRun:
    began = time.monotonic()
    model, history, val = train_on_split(prepared, options, out / "checkpoint.pt")
    trained = time.monotonic()
    test = split_windows(prepared, "test", 0.0)  # every window: no teacher in the test
    truth = evaluation_targets(test)
    labels = prepared.dataset.labels
    thresholds = suggest_thresholds(model, val, labels)
    head = evaluate("head", test, head_logits(model, test), truth)
    birdnet = evaluate("BirdNET", test, birdnet_logits(test), birdnet_truth(truth, prepared))
    evaluations = [head, birdnet]
    for name, change in ABLATIONS.items():
        other, _, _ = train_on_split(prepared, dataclasses.replace(options, **change), None)
        evaluations.append(evaluate(name, test, head_logits(other, test), truth))
    run = HeadRun(
        options, labels, prepared, history, truth, evaluations, thresholds,
        {
            "head": negatives_fired(test, head.probabilities, list(thresholds.values())),
            "BirdNET": negatives_fired(test, birdnet.probabilities, [0.5] * len(labels)),
        },
        model,
    )  # fmt: skip
    run.seconds.update(train=trained - began, evaluate=time.monotonic() - trained)
    return run


def training_block(run: HeadRun) -> Dict[str, object]:
    """What the sidecars record about how the model was made."""
    head = run.evaluations[0]
    return {
        "recipe": "head",
        "data_sha256": run.prepared.data_sha256,
        "split": "split.csv",
        "seed": run.options.loop.seed,
        "test_macro": head.macro,
        "birdnet_test_macro": run.evaluations[1].macro,
    }


def export_and_verify(
    run: HeadRun, out: Path, name: str, base_model: str, engine: str, verify_windows: int
) -> None:
    """Write both exports, then score test windows with each through the real engines."""
    model = run.model
    weights = model.export_weights(run.prepared.columns)
    species: List[Species] = list(run.prepared.dataset.classes)
    began = time.monotonic()
    block = training_block(run)
    head_path = export_head(
        out, weights, species, run.prepared.base, base_model, name, run.thresholds, block
    )
    base_onnx = load_artifact(resolve_model(base_model, "onnx"))
    merged = export_merged(out, weights, species, base_onnx, name, run.thresholds, block)
    run.files += [head_path, merged]
    exported = time.monotonic()
    windows = _verification_windows(run, verify_windows)

    columns = run.prepared.columns

    def reference(embeddings: np.ndarray, base_logits: np.ndarray) -> np.ndarray:
        prior = np.stack(
            [base_logits[:, c] if c is not None else np.zeros(len(embeddings)) for c in columns],
            axis=1,
        )
        return predict_logits(model, embeddings, prior)

    for path, engine_type in ((head_path, engine), (merged, "onnx")):
        run.parity.append(
            check_export(path, engine_type, base_model, windows, run.labels, reference)
        )
    run.seconds.update(export=exported - began, verify=time.monotonic() - exported)


def _verification_windows(run: HeadRun, limit: int) -> np.ndarray:
    base = run.prepared.base
    chunks = []
    for rec in run.prepared.split["test"]:
        if rec.key not in run.prepared.extraction.features:
            continue
        chunks.append(recording_windows(rec, base.sample_rate, base.window_samples,
                                        base.window_samples))  # fmt: skip
        if limit and sum(len(c) for c in chunks) >= limit:
            break
    windows = np.concatenate(chunks)
    return windows[:limit] if limit else windows
