"""Detection metrics in numpy: AP, ROC-AUC, precision/recall/F1 at a threshold, the threshold
with the best F1, per class and macro-averaged. A target of NaN is ignored (a background
species: neither a miss nor a false alarm)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


def _valid(y: np.ndarray, score: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    keep = ~np.isnan(y)
    return y[keep] >= 0.5, score[keep]


def pr_curve(y: np.ndarray, score: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and threshold at each distinct score, highest threshold first."""
    truth, score = _valid(y, score)
    order = np.argsort(-score, kind="mergesort")
    truth, score = truth[order], score[order]
    last = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]  # end of each tie run
    tp = np.cumsum(truth)[last]
    fp = (last + 1) - tp
    positives = max(int(truth.sum()), 1)
    return tp / np.maximum(tp + fp, 1), tp / positives, score[last]


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the step PR curve (scikit-learn's definition); NaN without positives."""
    truth, _ = _valid(y, score)
    if not truth.any():
        return float("nan")
    precision, recall, _ = pr_curve(y, score)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Probability a positive outscores a negative (ties count half); NaN without both."""
    truth, score = _valid(y, score)
    positives, negatives = int(truth.sum()), int((~truth).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(average, counts)
    return float((ranks[truth].sum() - positives * (positives + 1) / 2) / (positives * negatives))


@dataclass
class AtThreshold:
    threshold: float
    precision: float
    recall: float
    f1: float


def at_threshold(y: np.ndarray, score: np.ndarray, threshold: float) -> AtThreshold:
    truth, score = _valid(y, score)
    predicted = score >= threshold
    tp = int((predicted & truth).sum())
    precision = tp / max(int(predicted.sum()), 1)
    recall = tp / max(int(truth.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return AtThreshold(float(threshold), precision, recall, f1)


def best_threshold(y: np.ndarray, score: np.ndarray, floor: float = 0.05) -> AtThreshold:
    """The threshold (≥ ``floor``) with the best F1, ties to the higher one. It is placed
    halfway between the lowest score it accepts and the next lower score: any threshold in
    that gap decides the same, and the middle leaves the most room for unseen data."""
    precision, recall, thresholds = pr_curve(y, score)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall + 1e-12), 0)
    f1 = np.where(thresholds >= floor, f1, -1)
    if len(f1) == 0 or f1.max() < 0:
        return at_threshold(y, score, 0.5)
    best = int(np.argmax(f1))  # first maximum = highest threshold
    threshold = float(thresholds[best])
    if best + 1 < len(thresholds):
        threshold = max(floor, (threshold + float(thresholds[best + 1])) / 2)
    return at_threshold(y, score, threshold)


@dataclass
class ClassMetrics:
    label: str
    positives: int
    ap: float
    roc_auc: float
    at_half: AtThreshold
    best: AtThreshold

    def to_json(self) -> Dict[str, object]:
        return asdict(self)


def class_metrics(
    labels: Sequence[str], y: np.ndarray, scores: np.ndarray, thresholds: Optional[Sequence] = None
) -> List[ClassMetrics]:
    """Per class; ``thresholds`` (e.g. chosen on validation) replace the best-F1 search."""
    result = []
    for k, label in enumerate(labels):
        truth, score = y[:, k], scores[:, k]
        best = (
            at_threshold(truth, score, float(thresholds[k]))
            if thresholds is not None
            else best_threshold(truth, score)
        )
        result.append(
            ClassMetrics(
                label,
                int(np.nansum(truth >= 0.5)),
                average_precision(truth, score),
                roc_auc(truth, score),
                at_threshold(truth, score, 0.5),
                best,
            )
        )
    return result


def macro(metrics: Sequence[ClassMetrics]) -> Dict[str, float]:
    """Means over the classes that have positives (NaN-free)."""
    present = [m for m in metrics if m.positives > 0]

    def mean(values: List[float]) -> float:
        values = [v for v in values if not np.isnan(v)]
        return float(np.mean(values)) if values else float("nan")

    return {
        "ap": mean([m.ap for m in present]),
        "roc_auc": mean([m.roc_auc for m in present]),
        "f1_at_0.5": mean([m.at_half.f1 for m in present]),
        "f1_at_best": mean([m.best.f1 for m in present]),
        "classes": float(len(present)),
    }
