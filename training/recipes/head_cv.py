"""``birdd train head --folds K``: recordist-fold cross-validation of the head recipe.

One seeded split leaves a few dozen labelled test recordings, where a macro AP difference
under about 0.05 is one recording's rank. Here the recordings are cut into K folds of whole
recordists (stratified as the split is, ``recordist_folds``); each fold is the test set once,
the next fold validates (early stopping, thresholds, the fallback to BirdNET) and the rest
trains. The head and BirdNET are scored per test fold on the same recordings; ``cv.json`` and
``cv.md`` in OUT hold each fold and the mean ± sd over folds. Nothing is exported.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import numpy as np

from birdd.training.datasets.split import fold_split, recordist_folds
from birdd.training.prepare import Prepared
from birdd.training.recipes.head import HeadOptions, evaluation_targets
from birdd.training.recipes.head_run import (
    birdnet_logits,
    birdnet_truth,
    evaluate,
    head_logits,
    split_windows,
    train_on_split,
)

log = logging.getLogger("birdd.training")
METRICS = ("ap", "roc_auc", "f1_at_0.5", "f1_at_best")


@dataclass
class FoldResult:
    fold: int
    recordings: int  # test recordings (labelled and negatives)
    labelled: int
    species: int  # species with a test recording: the macro averages' classes
    head: Dict[str, float]
    birdnet: Dict[str, float]


def run_fold(prepared: Prepared, options: HeadOptions, index: int) -> FoldResult:
    model, _, _ = train_on_split(prepared, options, None)
    test = split_windows(prepared, "test", 0.0)
    truth = evaluation_targets(test)
    head = evaluate("head", test, head_logits(model, test), truth)
    birdnet = evaluate("BirdNET", test, birdnet_logits(test), birdnet_truth(truth, prepared))
    labelled = [rec for rec in test.recordings if rec.labels]
    return FoldResult(
        index, len(test.recordings), len(labelled), int(np.sum(np.nansum(truth >= 1, 0) > 0)),
        head.macro, birdnet.macro,
    )  # fmt: skip


def cross_validate(prepared: Prepared, options: HeadOptions, folds: int, out: Path) -> List:
    """Train and score the head on each of ``folds`` recordist folds; write the results."""
    parts = recordist_folds(prepared.dataset.recordings, folds, options.loop.seed)
    out.mkdir(parents=True, exist_ok=True)
    write_folds(out / "folds.csv", parts)
    results = []
    for index in range(folds):
        fold = dataclasses.replace(prepared, split=fold_split(parts, index))
        result = run_fold(fold, options, index)
        log.info("fold %d: test macro AP head %.3f, BirdNET %.3f (%d labelled recordings)",
                 index, result.head["ap"], result.birdnet["ap"], result.labelled)  # fmt: skip
        results.append(result)
    write_results(results, out)
    return results


def write_folds(path: Path, parts) -> None:
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(("key", "fold", "group", "labels"))
        for index, part in enumerate(parts):
            for rec in part:
                writer.writerow((rec.key, index, rec.group, ";".join(rec.labels)))


def summary(results: List[FoldResult], model: str) -> Dict[str, Dict[str, float]]:
    """Per metric: mean and sample sd over the folds (NaN folds left out)."""
    table = {}
    for metric in METRICS:
        values = np.array([getattr(r, model)[metric] for r in results], dtype=float)
        values = values[~np.isnan(values)]
        sd = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        table[metric] = {"mean": float(values.mean()) if len(values) else float("nan"), "sd": sd}
    return table


def cv_mean(results: List[FoldResult], model: str) -> str:
    """``0.940 ± 0.075``: the macro AP's mean and sd over the folds."""
    ap = summary(results, model)["ap"]
    return f"{ap['mean']:.3f} ± {ap['sd']:.3f}"


def write_results(results: List[FoldResult], out: Path) -> None:
    data = {
        "folds": [dataclasses.asdict(r) for r in results],
        "head": summary(results, "head"),
        "birdnet": summary(results, "birdnet"),
    }
    (out / "cv.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        "| fold | test recordings (labelled) | species | head macro AP | BirdNET macro AP |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r.fold} | {r.recordings} ({r.labelled}) | {r.species} | "
                     f"{r.head['ap']:.3f} | {r.birdnet['ap']:.3f} |")  # fmt: skip
    for name, key in (("mean ± sd", "ap"),):
        head, birdnet = data["head"][key], data["birdnet"][key]
        lines.append(f"| {name} | | | {head['mean']:.3f} ± {head['sd']:.3f} | "
                     f"{birdnet['mean']:.3f} ± {birdnet['sd']:.3f} |")  # fmt: skip
    (out / "cv.md").write_text("\n".join(lines) + "\n")
