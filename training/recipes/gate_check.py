"""What a gate does to BirdNET's bird detections on given recordings, as the daemon would.

``python3 -m birdd.training.recipes.gate_check --gate DIR/gate.onnx [--gate …] PATH…`` cuts
each recording as ``birdd --simulate`` does (3 s windows, no overlap), scores it once through
the real engine (the training feature cache: a second check is instant), counts BirdNET's bird
detections at ``--min-conf`` (window × bird class, as ``--per-window`` rows) and how many of
them each gate keeps (the daemon's own ``Gate`` on the same embeddings). Folders are grouped.
On the negatives every kept detection is a false bird; on bird audio the share kept is the
gate's recall of BirdNET's detections.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from birdd.daemon.postprocess.gate import Gate
from birdd.training.datasets.records import Recording, audio_files, is_audio
from birdd.training.features.embeddings import FeatureCache, Features
from birdd.training.prepare import default_cache
from birdd.training.recipes.gate_data import bird_columns
from birdd.training.verify import open_engine


@dataclass
class FileCount:
    """BirdNET's bird detections in one recording, and how many each gate keeps."""

    path: str
    windows: int
    birds: int
    kept: List[int] = field(default_factory=list)


def bird_hits(features: Features, birds: np.ndarray, min_conf: float) -> np.ndarray:
    """Per window, how many bird classes BirdNET reports at ``min_conf`` or more."""
    confidence = 1.0 / (1.0 + np.exp(-np.clip(features.logits[:, birds], -60, 60)))
    return (confidence >= min_conf).sum(axis=1)


def count_file(features: Features, birds: np.ndarray, gates: Sequence[Gate], min_conf: float):
    hits = bird_hits(features, birds, min_conf)
    kept = [
        int(sum(h for h, e in zip(hits, features.embeddings) if h and gate.is_bird(e)))
        for gate in gates
    ]
    return int(hits.sum()), kept


def recordings_of(paths: Sequence[Path]) -> Dict[str, List[Recording]]:
    """Recordings grouped by the folder given (a file given alone is its own group)."""
    groups: Dict[str, List[Recording]] = {}
    for path in paths:
        if path.is_dir():
            groups[str(path)] = [Recording(file) for file in audio_files(path)]
        elif is_audio(path):
            groups[str(path)] = [Recording(path)]
        else:
            raise SystemExit(f"gate_check: error: {path} is not an audio file or a folder")
    return groups


def check(
    gate_paths: Sequence[str],
    paths: Sequence[Path],
    min_conf: float = 0.5,
    engine_type: str = "tflite",
    cache_folder: Optional[Path] = None,
) -> Dict[str, List[FileCount]]:
    """Per group of ``paths``, each recording's BirdNET bird detections and each gate's."""
    gates = [Gate(path, 0.5) for path in gate_paths]
    engine = open_engine(engine_type, "birdnet")
    try:
        cache = FeatureCache(engine, cache_folder or default_cache(), 3.0)
        birds = bird_columns(engine.artifact.species)
        result: Dict[str, List[FileCount]] = {}
        for group, recordings in recordings_of(paths).items():
            result[group] = []
            for recording in recordings:
                features = cache.features(recording)
                total, kept = count_file(features, birds, gates, min_conf)
                row = FileCount(str(recording.path), features.windows, total, kept)
                result[group].append(row)
    finally:
        engine.close()
    return result


def summary(result: Dict[str, List[FileCount]], gate_paths: Sequence[str]) -> str:
    """A markdown table: per group, BirdNET's bird detections and each gate's (kept %)."""
    head = "| recordings | windows | BirdNET birds ≥ min-conf | " + " | ".join(
        f"with {Path(g).parent.name}/{Path(g).name}" for g in gate_paths
    )
    lines = [head + " |", "|" + "---|" * (3 + len(gate_paths))]
    for group, rows in result.items():
        total = sum(row.birds for row in rows)
        cells = []
        for index in range(len(gate_paths)):
            kept = sum(row.kept[index] for row in rows)
            share = f" ({100 * kept / total:.1f} %)" if total else ""
            cells.append(f"{kept}{share}")
        windows = sum(row.windows for row in rows)
        lines.append(f"| {group} ({len(rows)}) | {windows} | {total} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m birdd.training.recipes.gate_check")
    parser.add_argument("paths", nargs="+", type=Path, help="recordings or folders of them")
    parser.add_argument("--gate", action="append", required=True, help="a gate.onnx (repeat)")
    parser.add_argument("--min-conf", type=float, default=0.5)
    parser.add_argument("--engine", choices=["tflite", "onnx"], default="tflite")
    parser.add_argument("--cache", type=Path, help="feature cache (default the training one)")
    parser.add_argument("--json", type=Path, help="also write every file's counts here")
    args = parser.parse_args(argv)
    result = check(args.gate, args.paths, args.min_conf, args.engine, args.cache)
    print(summary(result, args.gate))
    if args.json:
        rows = {group: [vars(row) for row in rows] for group, rows in result.items()}
        args.json.write_text(json.dumps({"gates": args.gate, "files": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
