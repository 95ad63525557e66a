"""``birdd train distill|scratch``: prepared features → a trained student → ONNX FP32 and int8
files re-scored through the birdd ONNX engine → ``results.json`` and ``report.md``."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from birdd.engines.base import Engine
from birdd.training.datasets.records import Recording, audio_files
from birdd.training.export import tflite_student
from birdd.training.export.qdq import overrides, static_int8
from birdd.training.export.student import engine_scores, export_student, parity, quantise_int8
from birdd.training.features.embeddings import FeatureCache
from birdd.training.models.flops import onnx_macs
from birdd.training.models.student import block_widths, parameter_count
from birdd.training.prepare import DataOptions, Prepared, default_cache, prepare
from birdd.training.recipes.chunks import ChunkDataset, build_chunks, concat, decode
from birdd.training.recipes.distill import (
    StudentOptions,
    calibration_windows,
    prune_and_tune,
    quantisation_aware,
    split_windows,
    student_logits,
    train_student,
)
from birdd.training.recipes.head import evaluation_targets
from birdd.training.recipes.head_run import Evaluation, evaluate
from birdd.training.recipes.targets import WindowSet, window_set
from birdd.training.verify import Parity

log = logging.getLogger("birdd.training")

CALIBRATION_WINDOWS = 64


@dataclass
class StudentRun:
    recipe: str
    evaluations: List[Evaluation] = field(default_factory=list)
    parity: List[Parity] = field(default_factory=list)
    facts: Dict[str, object] = field(default_factory=dict)
    seconds: Dict[str, float] = field(default_factory=dict)


def _split(prepared: Prepared, name: str, hop: int) -> tuple:
    """A split's WindowSet (all windows) and the raw windows in the same order."""
    windows = window_set(
        prepared.split[name], prepared.extraction.features, prepared.dataset.labels,
        prepared.columns, 0.0,
    )  # fmt: skip
    base = prepared.base
    audio = decode(windows.recordings, base.sample_rate, base.window_samples)
    raw = split_windows(audio, base.sample_rate, base.window_samples, hop)
    return windows, raw


def _dataset(
    prepared: Prepared, options: StudentOptions, hop: int, unlabelled: Sequence[Recording],
    engine: Engine, cache: Optional[Path], hop_s: float,
) -> ChunkDataset:  # fmt: skip
    base, labels, columns = prepared.base, prepared.dataset.labels, prepared.columns
    train = [r for r in prepared.split["train"] if r.key in prepared.extraction.features]
    features = prepared.extraction.features
    chunks = build_chunks(train, features, labels, columns, hop, options.teacher_min)
    audio = decode(train, base.sample_rate, base.window_samples)
    if unlabelled and options.pseudo_weight > 0:
        extraction = FeatureCache(engine, cache or default_cache(), hop_s).extract(
            unlabelled, "unlabelled audio"
        )
        kept = [r for r in unlabelled if r.key in extraction.features]
        pseudo = build_chunks(
            kept, extraction.features, labels, columns, hop, 0.0, options.pseudo_weight
        )
        chunks = concat(chunks, pseudo, len(audio))
        audio += decode(kept, base.sample_rate, base.window_samples)
    log.info(
        "%d training chunks (%d pseudo-labelled, %d negative)",
        len(chunks), int((~chunks.labelled).sum()), int(chunks.negative.sum()),
    )  # fmt: skip
    return ChunkDataset(
        chunks, audio, base.sample_rate, base.window_samples, options.augment, options.loop.seed
    )


def _birdnet_logits(windows: WindowSet) -> np.ndarray:
    return np.nan_to_num(windows.teacher, nan=-60.0)


def train_export(
    recipe: str, data: DataOptions, options: StudentOptions, out: Path, engine: Engine,
    unlabelled_dirs: Sequence[Path], name: str, verify_windows: int, tflite: str = "auto",
) -> StudentRun:  # fmt: skip
    began = time.monotonic()
    run = StudentRun(recipe)
    prepared = prepare(data, out, engine)
    hop = max(1, round(data.hop_s * prepared.base.sample_rate))
    unlabelled = [Recording(path) for folder in unlabelled_dirs for path in audio_files(folder)]
    dataset = _dataset(prepared, options, hop, unlabelled, engine, data.cache, data.hop_s)
    val, val_windows = _split(prepared, "val", hop)
    prepared_s = time.monotonic()
    model, history = train_student(
        dataset.chunks, dataset, val, val_windows, options, out / "checkpoint.pt", recipe
    )
    test, test_windows = _split(prepared, "test", hop)
    truth = evaluation_targets(test)
    logits = student_logits(model, test_windows)
    run.evaluations += [
        evaluate(recipe, test, logits, truth),
        evaluate("BirdNET", test, _birdnet_logits(test), truth),
    ]
    exported = run.evaluations[0]
    widths = list(block_widths(model))
    if options.prune_keep < 1:
        model, tuned = prune_and_tune(
            model, dataset, val, val_windows, options, out / "checkpoint_pruned.pt"
        )
        logits = student_logits(model, test_windows)
        name_pruned = f"{recipe} pruned to {options.prune_keep:g} of the channels"
        exported = evaluate(name_pruned, test, logits, truth)
        run.evaluations.append(exported)
        run.facts["widths_before_pruning"] = widths
        run.facts["prune_history"] = tuned.to_json()
    species = list(prepared.dataset.classes)
    samples = prepared.base.window_samples
    calibration = calibration_windows(dataset, CALIBRATION_WINDOWS, options.loop.seed)
    ranges = None
    if options.qat_epochs > 0:
        ranges, before = static_int8(model, species, samples, calibration, test_windows)
        before_qat = evaluate(f"{recipe} int8 before QAT (ONNX Runtime)", test, before, truth)
        drop = exported.macro["ap"] - before_qat.macro["ap"]
        run.facts["int8_ap_drop_before_qat"] = drop
        model, qat = quantisation_aware(
            model, ranges, dataset, val, val_windows, options, out / "checkpoint_qat.pt"
        )
        logits = student_logits(model, test_windows)
        exported = evaluate(f"{recipe} after QAT (FP32)", test, logits, truth)
        _, again = static_int8(model, species, samples, calibration, test_windows)
        recalibrated = evaluate(
            f"{recipe} int8 after QAT, recalibrated (ONNX Runtime)", test, again, truth
        )
        run.evaluations += [before_qat, exported, recalibrated]
        run.facts["qat_history"] = qat.to_json()
    trained_s = time.monotonic()
    extra = {
        "source": f"birdd train {recipe}",
        "training": {
            "recipe": recipe, "size": options.size, "data_sha256": prepared.data_sha256,
            "split": "split.csv", "seed": options.loop.seed, "test_macro": exported.macro,
            "birdnet_test_macro": run.evaluations[1].macro, "qat_epochs": options.qat_epochs,
        },
    }  # fmt: skip
    fp32 = export_student(model, out / "student.onnx", species, name, samples, extra)
    check = test_windows[:verify_windows] if verify_windows else test_windows
    run.parity.append(parity(fp32, check, logits[: len(check)]))
    int8 = quantise_int8(
        fp32, out / "student_int8.onnx", model, species, f"{name}_int8", calibration, extra,
        ranges and overrides(fp32, ranges),
    )  # fmt: skip
    int8_runs = [("ONNX Runtime", int8, engine_scores)]
    tflite_files = tflite_student.try_export_tflite(
        model, out, species, name, samples, extra, calibration, tflite
    )
    if tflite_files:
        run.parity.append(tflite_student.parity(tflite_files[0], check, logits[: len(check)]))
        run.facts["tflite_fp32_bytes"] = tflite_files[0].stat().st_size
        run.facts["tflite_int8_bytes"] = tflite_files[1].stat().st_size
        int8_runs.append(("TFLite", tflite_files[1], tflite_student.engine_scores))
    drops = {}
    for runtime, path, scores in int8_runs:
        quantised = evaluate(f"{recipe} int8 ({runtime})", test, scores(path, test_windows), truth)
        run.evaluations.append(quantised)
        drops[runtime] = exported.macro["ap"] - quantised.macro["ap"]
    run.facts["int8_ap_drop"] = drops
    run.facts.update({
        "size": options.size, "widths": list(block_widths(model)),
        "parameters": parameter_count(model),
        "macs_per_window": onnx_macs(fp32), "fp32_bytes": fp32.stat().st_size,
        "int8_bytes": int8.stat().st_size, "training_chunks": len(dataset),
        "best_epoch": history.best_epoch, "epochs_run": len(history.val_score),
        "test_windows": len(test_windows), "history": history.to_json(),
    })  # fmt: skip
    run.seconds = {
        "prepare": prepared_s - began, "train": trained_s - prepared_s,
        "evaluate_export": time.monotonic() - trained_s,
    }  # fmt: skip
    write_results(run, out)
    return run


def write_results(run: StudentRun, out: Path) -> None:
    body = {
        "recipe": run.recipe,
        "evaluations": {e.name: e.macro for e in run.evaluations},
        "parity": [p.to_json() for p in run.parity],
        "facts": run.facts,
        "seconds": run.seconds,
    }
    (out / "results.json").write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
    rows = [
        f"# birdd train {run.recipe}",
        "",
        "| model | macro AP | ROC-AUC | F1 at 0.5 | F1 at best |",
        "|---|---|---|---|---|",
    ]
    for e in run.evaluations:
        keys = ("ap", "roc_auc", "f1_at_0.5", "f1_at_best")
        values = [e.macro.get(key, float("nan")) for key in keys]
        rows.append(f"| {e.name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    facts = {k: v for k, v in run.facts.items() if k != "history"}
    rows += ["", *(f"- {k}: {v}" for k, v in facts.items())]
    rows += [f"- parity {p.export} on {p.engine}: max |Δ| {p.max_abs_diff:.2e}" for p in run.parity]
    (out / "report.md").write_text("\n".join(rows) + "\n", encoding="utf-8")
