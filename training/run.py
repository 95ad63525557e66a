"""Runs a recipe from parsed ``birdd train`` arguments; turns failures into exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
import time

import torch

from birdd.engines.errors import EngineError, ModelArtifactError
from birdd.training.datasets.records import DatasetError
from birdd.training.features.embeddings import FeatureCache
from birdd.training.loop import LoopConfig
from birdd.training.prepare import DataOptions, default_cache, prepare
from birdd.training.recipes.gate import GateOptions, run_gate_recipe
from birdd.training.recipes.gate_data import GateData, unlabelled_recordings
from birdd.training.recipes.head import HeadOptions
from birdd.training.recipes.head_cv import cross_validate, cv_mean
from birdd.training.recipes.head_run import export_and_verify, train_and_evaluate
from birdd.training.report.markdown import write_report
from birdd.training.verify import open_engine

log = logging.getLogger("birdd.training")


def data_options(args: argparse.Namespace) -> DataOptions:
    return DataOptions(
        data=args.data,
        negatives=args.negatives,
        classes=args.classes,
        fractions=args.split,
        seed=args.seed,
        hop_s=args.hop,
        base_model=args.base_model,
        engine=args.engine,
        cache=args.cache,
    )


def head_options(args: argparse.Namespace) -> HeadOptions:
    return HeadOptions(
        hidden=args.hidden,
        dropout=args.dropout,
        loss=args.loss,
        mixup_alpha=args.mixup,
        class_weights=not args.no_class_weights,
        label_smoothing=args.label_smoothing,
        teacher_min=args.teacher_min,
        fallback=not getattr(args, "no_fallback", False),
        loop=LoopConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            warmup_epochs=args.warmup,
            patience=args.patience,
            seed=args.seed,
        ),
    )


def gate_options(args: argparse.Namespace) -> GateOptions:
    data = GateData(
        teacher_min=args.teacher_min,
        weak_min=args.weak_min,
        crops=args.crops,
        crop_min_s=args.crop_seconds[0],
        crop_max_s=args.crop_seconds[1],
    )
    return GateOptions(head=head_options(args), data=data, recall=args.recall)


def run_head(args: argparse.Namespace) -> int:
    began = time.monotonic()
    out = args.out
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists() and not args.resume:
        checkpoint.unlink()  # a fresh run; --resume continues the last one
    prepared = prepare(data_options(args), out)
    if args.folds:
        results = cross_validate(prepared, head_options(args), args.folds, out)
        head, birdnet = cv_mean(results, "head"), cv_mean(results, "birdnet")
        log.info("%d folds: macro AP head %s, BirdNET %s; %s", len(results), head, birdnet,
                 out / "cv.md")  # fmt: skip
        return 0
    features_s = time.monotonic() - began
    run = train_and_evaluate(prepared, head_options(args), out)
    run.seconds = {"features": features_s, **run.seconds}
    export_and_verify(run, out, args.name, args.base_model, args.engine, args.verify_windows)
    run.seconds["total"] = time.monotonic() - began
    report = write_report(run, out / "report")
    head, birdnet = run.evaluations[0], run.evaluations[1]
    log.info(
        "test macro AP %.3f (BirdNET %.3f), ROC-AUC %.3f (%.3f); %s; report %s",
        head.macro["ap"], birdnet.macro["ap"], head.macro["roc_auc"], birdnet.macro["roc_auc"],
        ", ".join(f"{p.export} on {p.engine} max Δ {p.max_abs_diff:.1e}" for p in run.parity),
        report,
    )  # fmt: skip
    if not all(parity.ok for parity in run.parity):
        log.error("an export disagrees with PyTorch by more than 1e-3: see %s", report)
        return 1
    return 0


def run_gate(args: argparse.Namespace) -> int:
    out = args.out
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists() and not args.resume:
        checkpoint.unlink()
    if not args.negatives:
        print("birdd: error: birdd train gate needs --negatives DIR…: recordings with no "
              "bird", file=sys.stderr)  # fmt: skip
        return 2
    options = data_options(args)
    engine = open_engine(options.engine, options.base_model, options.batch)
    try:
        prepared = prepare(options, out, engine)
        cache = FeatureCache(engine, options.cache or default_cache(), options.hop_s)
        unlabelled = unlabelled_recordings(args.unlabelled)
        run_gate_recipe(prepared, cache, gate_options(args), unlabelled, out, args.base_model,
                        args.name)  # fmt: skip
    finally:
        engine.close()
    return 0


def run_recipe(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="birdd: %(message)s", stream=sys.stderr)
    torch.set_num_threads(max(1, args.threads))
    try:
        if args.recipe in ("distill", "scratch"):
            from birdd.training.recipes.student_cli import run_student

            return run_student(args)
        if args.recipe == "gate":
            return run_gate(args)
        return run_head(args)
    except (DatasetError, ModelArtifactError) as exc:
        print(f"birdd: error: {exc}", file=sys.stderr)
        return 2
    except EngineError as exc:
        print(f"birdd: error: {exc}", file=sys.stderr)
        return 1
