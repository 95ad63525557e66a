"""The report's PNG plots (matplotlib's Figure API: no pyplot state, no display)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
from matplotlib.figure import Figure

from birdd.training.loop import History
from birdd.training.report.metrics import ClassMetrics, pr_curve


def short(label: str) -> str:
    """``Genus species_Common name`` → the common name."""
    return label.split("_", 1)[-1]


def training_curves(history: History, path: Path) -> Path:
    figure = Figure(figsize=(7, 4))
    loss_axis = figure.subplots()
    epochs = np.arange(1, len(history.train_loss) + 1)
    loss_axis.plot(epochs, history.train_loss, color="tab:blue", label="training loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("training loss", color="tab:blue")
    score_axis = loss_axis.twinx()
    score_axis.plot(epochs, history.val_score, color="tab:orange", label="validation score")
    score_axis.set_ylabel("validation score (macro AP − 0.05 × loss)", color="tab:orange")
    score_axis.axvline(history.best_epoch + 1, color="grey", linestyle=":", label="best epoch")
    figure.suptitle("Training curves")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def pr_curves(
    labels: Sequence[str], y: np.ndarray, scores: Dict[str, np.ndarray], path: Path
) -> Path:
    """One panel per class with positives: a PR curve per model (name → probabilities)."""
    present = [k for k in range(len(labels)) if np.nansum(y[:, k] >= 0.5) > 0]
    columns = max(1, min(4, len(present)))
    rows = max(1, math.ceil(len(present) / columns))
    figure = Figure(figsize=(4 * columns, 3.2 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.flat:
        axis.set_visible(False)
    for axis, k in zip(axes.flat, present):
        axis.set_visible(True)
        for style, (name, probabilities) in zip(("-", "--", ":", "-."), scores.items()):
            precision, recall, _ = pr_curve(y[:, k], probabilities[:, k])
            # precision p_i holds over recall (r_{i-1}, r_i]
            x, y_ = np.r_[0, recall], np.r_[precision[:1], precision]
            axis.step(x, y_, where="pre", linestyle=style, label=name)
        axis.set_title(short(labels[k]), fontsize=9)
        axis.set_xlim(0, 1.02)
        axis.set_ylim(0, 1.05)
        axis.set_xlabel("recall", fontsize=8)
        axis.set_ylabel("precision", fontsize=8)
    axes.flat[0].legend(fontsize=8)
    figure.suptitle("Precision-recall on the test split (per recording)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def ap_bars(results: Dict[str, Sequence[ClassMetrics]], path: Path) -> Path:
    """Per-class AP, one bar per model, classes with positives only."""
    names = list(results)
    first = [m for m in results[names[0]] if m.positives > 0]
    labels = [m.label for m in first]
    x = np.arange(len(labels))
    width = 0.8 / len(names)
    figure = Figure(figsize=(max(6, 0.9 * len(labels)), 4.5))
    axis = figure.subplots()
    for index, name in enumerate(names):
        by_label = {m.label: m.ap for m in results[name]}
        axis.bar(x + index * width, [by_label[label] for label in labels], width, label=name)
    axis.set_xticks(x + width * (len(names) - 1) / 2)
    axis.set_xticklabels([short(label) for label in labels], rotation=40, ha="right", fontsize=8)
    axis.set_ylabel("average precision")
    axis.set_ylim(0, 1.05)
    axis.legend()
    axis.set_title("Per-class AP on the test split")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path
