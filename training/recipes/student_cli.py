"""``birdd train distill|scratch`` from parsed arguments to a finished run."""

from __future__ import annotations

import argparse
import logging

from birdd.training.augment import AugmentOptions
from birdd.training.loop import LoopConfig
from birdd.training.recipes.distill import StudentOptions
from birdd.training.recipes.distill_run import train_export
from birdd.training.recipes.kd import KDOptions
from birdd.training.run import data_options
from birdd.training.verify import open_engine

log = logging.getLogger("birdd.training")


def student_options(args: argparse.Namespace) -> StudentOptions:
    options = StudentOptions(
        size=args.size,
        kd=KDOptions(getattr(args, "alpha", 0.5), getattr(args, "temperature", 3.0)),
        teacher_min=getattr(args, "teacher_min", 0.1),
        pseudo_weight=getattr(args, "pseudo_weight", 0.0),
        augment=AugmentOptions.off() if args.no_augment else AugmentOptions(),
        workers=args.workers,
        prune_keep=args.prune,
        prune_epochs=args.prune_epochs,
        qat_epochs=args.qat_epochs,
        loop=LoopConfig(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=1e-3,
            warmup_epochs=1, patience=args.patience, seed=args.seed,
        ),
    )  # fmt: skip
    return options.as_scratch() if args.recipe == "scratch" else options


def run_student(args: argparse.Namespace) -> int:
    checkpoint = args.out / "checkpoint.pt"
    if checkpoint.exists() and not args.resume:
        checkpoint.unlink()
    options = student_options(args)
    data = data_options(args)
    engine = open_engine(args.engine, args.base_model)
    try:
        run = train_export(
            args.recipe, data, options, args.out, engine, getattr(args, "unlabelled", []),
            args.name, args.verify_windows, args.tflite,
        )  # fmt: skip
    finally:
        engine.close()
    student, birdnet = run.evaluations[0], run.evaluations[1]
    int8 = {e.name: e.macro["ap"] for e in run.evaluations if " int8 (" in e.name}
    log.info(
        "test macro AP %.3f (BirdNET %.3f; %s); %d multiply-adds per window; "
        "int8 %d bytes; parity max Δ %s; report %s",
        student.macro["ap"], birdnet.macro["ap"],
        ", ".join(f"{name} {ap:.3f}" for name, ap in int8.items()),
        run.facts["macs_per_window"], run.facts["int8_bytes"],
        ", ".join(f"{p.export} {p.max_abs_diff:.1e}" for p in run.parity),
        args.out / "report.md",
    )  # fmt: skip
    return 0 if all(p.ok for p in run.parity) else 1
