"""How often a student names the same species as BirdNET (its teacher) on unlabelled audio.

Both models score every 3 s window of the recordings through the birdd engines (BirdNET on
``--engine``, the student's ONNX file on ONNX Runtime); BirdNET's scores are restricted to the
student's species. Reported: top-1 agreement on the windows where BirdNET gives one of those
species at least ``--min-score`` (where there is something to agree on), and the count of
windows each model scores ≥ 0.5.

    python -m birdd.training.recipes.agreement STUDENT.onnx DIR… [--min-score 0.1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from birdd.engines.base import Engine
from birdd.training.datasets.records import audio_files
from birdd.training.features.audio import cut_windows, read_mono
from birdd.training.recipes.targets import teacher_columns
from birdd.training.verify import open_engine


def _scores(engine: Engine, windows: np.ndarray) -> np.ndarray:
    """Probabilities: the engines return what the model does, the sidecar says what it is."""
    batch = engine.input_spec.max_batch
    parts = [engine.predict(windows[i : i + batch]) for i in range(0, len(windows), batch)]
    raw = np.concatenate(parts)
    return 1.0 / (1.0 + np.exp(-raw)) if engine.artifact.activation == "sigmoid" else raw


def agreement(student: Engine, birdnet: Engine, files: Sequence[Path], min_score: float) -> Dict:
    labels = [sp.label for sp in student.artifact.species]
    columns = teacher_columns([sp.label for sp in birdnet.artifact.species], labels)
    known = [k for k, column in enumerate(columns) if column is not None]
    rate, size = birdnet.artifact.sample_rate, birdnet.artifact.window_samples
    ours: List[np.ndarray] = []
    theirs: List[np.ndarray] = []
    for path in files:
        windows = cut_windows(read_mono(str(path), rate), size, size, rate)
        ours.append(_scores(student, windows)[:, known])
        theirs.append(_scores(birdnet, windows)[:, [columns[k] for k in known]])
    s, b = np.concatenate(ours), np.concatenate(theirs)
    heard = b.max(axis=1) >= min_score
    same = s.argmax(axis=1) == b.argmax(axis=1)
    return {
        "files": len(files), "windows": len(s), "species": len(known),
        "birdnet_windows_at_min_score": int(heard.sum()), "min_score": min_score,
        "top1_agreement": float(same[heard].mean()) if heard.any() else float("nan"),
        "birdnet_detections_0.5": int((b >= 0.5).sum()),
        "student_detections_0.5": int((s >= 0.5).sum()),
        "both_detections_0.5": int(((b >= 0.5) & (s >= 0.5)).sum()),
    }  # fmt: skip


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("student", type=Path)
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--min-score", type=float, default=0.1)
    parser.add_argument("--engine", default="tflite")
    args = parser.parse_args(argv or None)
    files = [path for folder in args.dirs for path in audio_files(folder)]
    student, birdnet = open_engine("onnx", str(args.student)), open_engine(args.engine, "birdnet")
    try:
        print(json.dumps(agreement(student, birdnet, files, args.min_score), indent=1))
    finally:
        student.close()
        birdnet.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
