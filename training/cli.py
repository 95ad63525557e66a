"""``birdd train RECIPE DATA… [options]``: the training command line.

Parsing needs nothing beyond the standard library, so ``birdd train --help`` works without the
training extra; torch and onnx are imported once a recipe runs, and their absence is one line
naming ``pip install 'birdd[training]'``. Exit codes as birdd's: 0 done, 1 a failure while
running, 2 bad input (data, options, a missing extra).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional, Sequence

log = logging.getLogger("birdd.training")

STUDENT_RECIPES = {
    "distill": "a compact student CNN on raw audio distilled from BirdNET (exported as ONNX "
    "FP32 and int8)",
    "scratch": "the same student on labels alone: the baseline that shows what distill adds",
}
EXTRA_HINT = "pip install 'birdd[training]' (after: pip install torch==2.13.0 for the CPU build)"


def _fractions(text: str) -> List[float]:
    parts = [float(part) for part in text.split(",")]
    if len(parts) != 3 or abs(sum(parts) - 1) > 1e-6 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: three positive fractions summing to 1")
    return parts


def _data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data",
        nargs="+",
        type=Path,
        help="training data: a folder of class folders (BirdNET-Analyzer's 'Genus species_"
        "Common name/'), a folder with labels.csv, a BirdCLEF-style CSV, or a folder of "
        "recordings with Raven selection tables / Audacity labels",
    )
    parser.add_argument(
        "--negatives", nargs="+", type=Path, default=[], metavar="DIR",
        help="folders of recordings with no bird (a labels.csv with source_id groups clips)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("birdd-train"), help="run folder")
    parser.add_argument("--classes", nargs="+", help="train only these classes (any name)")
    parser.add_argument(
        "--split", type=_fractions, default=[0.6, 0.2, 0.2], metavar="TRAIN,VAL,TEST",
        help="fractions of the recordists per split (default 0.6,0.2,0.2)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and training")
    parser.add_argument("--hop", type=float, default=3.0, help="window hop in seconds")
    parser.add_argument("--base-model", default="birdnet", help="installed model to embed with")
    parser.add_argument(
        "--engine", choices=["tflite", "onnx"], default="tflite",
        help="engine computing the embeddings; the head export runs on it (default tflite)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--cache", type=Path, help="feature cache (default ~/.cache/birdd/features)"
    )


def _loop_flags(
    parser: argparse.ArgumentParser,
    epochs: int,
    batch_size: int,
    lr: float,
    patience: int,
    name: str,
) -> None:
    """The training loop's flags every recipe has, with the recipe's own defaults."""
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--patience", type=int, default=patience, help="early-stopping epochs")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--name", default=name, help="model name in the sidecars")
    parser.add_argument(
        "--verify-windows", type=int, default=0,
        help="test windows re-scored through the engines for parity (default 0: all)",
    )  # fmt: skip


def _head_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hidden", type=int, default=0, help="hidden units (0: linear head)")
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--loss", choices=["bce", "focal"], default="bce")
    parser.add_argument("--mixup", type=float, default=0.4, help="mixup alpha (0: off)")
    parser.add_argument("--no-class-weights", action="store_true", help="no rare-class weight")
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument(
        "--teacher-min", type=float, default=0.1,
        help="keep a labelled window only where BirdNET gives its species this much "
        "(0: keep all)",
    )  # fmt: skip
    _loop_flags(parser, epochs=200, batch_size=64, lr=1e-3, patience=25, name="birdd_head")
    parser.add_argument("--weight-decay", type=float, default=1e-2)
    parser.add_argument("--warmup", type=int, default=5, help="warm-up epochs")


def _crop_range(text: str) -> List[float]:
    parts = [float(part) for part in text.split(",")]
    if len(parts) != 2 or not 0 < parts[0] <= parts[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: MIN,MAX seconds with 0 < MIN <= MAX")
    return parts


def _gate_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--unlabelled", nargs="+", type=Path, default=[], metavar="DIR",
        help="bird audio without labels (soundscapes, clips): windows where BirdNET's top "
        "bird reaches --weak-min train as bird (training split only)",
    )  # fmt: skip
    parser.add_argument(
        "--weak-min", type=float, default=0.5,
        help="BirdNET's top bird score that makes a window of bird audio a bird window",
    )  # fmt: skip
    parser.add_argument(
        "--crops", type=int, default=1,
        help="padded crops per window: a random piece at the start of a zeroed window, as a "
        "file shorter than a window is padded (0: none)",
    )  # fmt: skip
    parser.add_argument(
        "--crop-seconds", type=_crop_range, default=[0.25, 3.0], metavar="MIN,MAX",
        help="length range of the padded crops (default 0.25,3)",
    )  # fmt: skip
    parser.add_argument(
        "--recall", type=float, default=0.995,
        help="the threshold keeps this share of the validation bird windows (at most 0.5; "
        "folded into the gate so it says bird at 0.5)",
    )  # fmt: skip


def _student_flags(parser: argparse.ArgumentParser, distill: bool) -> None:
    parser.add_argument("--size", choices=["small", "tiny"], default="small")
    if distill:
        parser.add_argument("--alpha", type=float, default=0.5, help="KD term's share")
        parser.add_argument("--temperature", type=float, default=3.0)
        parser.add_argument(
            "--teacher-min", type=float, default=0.1,
            help="keep a chunk only where BirdNET's top target species is its label, at "
            "this much or more (0: keep all)",
        )  # fmt: skip
        parser.add_argument(
            "--unlabelled", nargs="+", type=Path, default=[], metavar="DIR",
            help="unlabelled recordings: BirdNET's scores on them as pseudo-labels",
        )  # fmt: skip
        parser.add_argument("--pseudo-weight", type=float, default=0.05)
    parser.add_argument("--no-augment", action="store_true", help="no augmentation, no mixup")
    parser.add_argument(
        "--prune", type=float, default=1.0, metavar="KEEP",
        help="structured pruning: the share of channels kept (default 1: none), then fine-tuned",
    )  # fmt: skip
    parser.add_argument("--prune-epochs", type=int, default=2, help="fine-tuning after pruning")
    parser.add_argument(
        "--qat-epochs", type=int, default=2,
        help="quantisation-aware fine-tuning before the export, with the int8 file's arithmetic "
        "faked in float (default 2; 0: none)",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    parser.add_argument(
        "--tflite", choices=["auto", "yes", "no"], default="auto",
        help="student_tflite.tflite and its int8 twin: auto where the TensorFlow conversion "
        "environment exists (a warning otherwise), yes (creates it, ~1.6 GB), no",
    )  # fmt: skip
    _loop_flags(parser, epochs=20, batch_size=32, lr=3e-3, patience=6, name="birdd_student")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="birdd train",
        description="Train a model on labelled recordings; writes the model files (each with "
        "its sidecar), split.csv and a report into --out.",
    )
    recipes = parser.add_subparsers(dest="recipe", metavar="RECIPE")
    head = recipes.add_parser(
        "head",
        help="a linear or small MLP head on BirdNET's embeddings (exported as a head the "
        "engines append to BirdNET's classes, and as one stand-alone ONNX model)",
    )
    _data_flags(head)
    _head_flags(head)
    head.add_argument(
        "--no-fallback", action="store_true",
        help="train every class's correction and keep it (default: a class scores as "
        "BirdNET does unless the head ranks the validation recordings better)",
    )  # fmt: skip
    head.add_argument(
        "--folds", type=int, default=0, metavar="K",
        help="recordist-fold cross-validation instead of one split: K folds, each the test "
        "set once; head and BirdNET per fold in OUT/cv.md (nothing exported)",
    )  # fmt: skip
    gate = recipes.add_parser(
        "gate",
        help="a bird / no-bird gate on BirdNET's embeddings (gate.onnx, used with --gate or "
        "postprocess.gate): DATA are bird recordings, --negatives recordings with no bird",
    )
    _data_flags(gate)
    _head_flags(gate)
    _gate_flags(gate)
    gate.set_defaults(name="birdd_gate")
    for recipe, text in STUDENT_RECIPES.items():
        student = recipes.add_parser(recipe, help=text)
        _data_flags(student)
        _student_flags(student, recipe == "distill")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.recipe is None:
        parser.print_help()
        return 2
    try:
        import onnx  # noqa: F401
        import torch  # noqa: F401  (the extra's heaviest part: fail here, with the fix)
    except ImportError as exc:
        print(f"birdd: error: birdd train needs {exc.name}: {EXTRA_HINT}", file=sys.stderr)
        return 2
    from birdd.training.run import run_recipe

    return run_recipe(args)
