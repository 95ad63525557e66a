"""What every recipe starts from: the dataset, its split by recordist (written to split.csv in
the run folder) and the BirdNET features of every recording, through the real engine."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from birdd.engines.base import Engine
from birdd.engines.models.artifact import ModelArtifact
from birdd.training.datasets.load import Dataset, build_dataset
from birdd.training.datasets.records import Recording
from birdd.training.datasets.split import split_recordings, write_split
from birdd.training.features.embeddings import Extraction, FeatureCache
from birdd.training.recipes.targets import teacher_columns
from birdd.training.verify import open_engine

log = logging.getLogger("birdd.training")


def default_cache() -> Path:
    """``$XDG_CACHE_HOME/birdd/features`` (``~/.cache/birdd/features``)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "birdd" / "features"


@dataclass
class DataOptions:
    data: Sequence[Path]
    negatives: Sequence[Path] = ()
    classes: Optional[Sequence[str]] = None
    fractions: Sequence[float] = (0.6, 0.2, 0.2)
    seed: int = 0
    hop_s: float = 3.0
    base_model: str = "birdnet"
    engine: str = "tflite"
    batch: int = 8
    cache: Optional[Path] = None


@dataclass
class Prepared:
    dataset: Dataset
    split: Dict[str, List[Recording]]
    extraction: Extraction
    base: ModelArtifact  # the model whose embeddings and scores the features are
    columns: List[Optional[int]]  # each class's column in the base model's output
    data_sha256: str


def data_hash(recordings: Sequence[Recording], cache: FeatureCache) -> str:
    """Identifies the training data: every recording's key, labels and feature-cache key."""
    digest = hashlib.sha256()
    for rec in sorted(recordings, key=lambda r: r.key):
        digest.update(f"{rec.key}|{';'.join(rec.labels)}|{cache.key(rec)}\n".encode())
    return digest.hexdigest()


def prepare(options: DataOptions, out: Path, engine: Optional[Engine] = None) -> Prepared:
    """Read and split the data, then compute (or load from the cache) every feature."""
    engine = engine or open_engine(options.engine, options.base_model, options.batch)
    base = engine.artifact
    dataset = build_dataset(options.data, options.negatives, base.species, options.classes)
    split = split_recordings(dataset.recordings, options.fractions, options.seed)
    out.mkdir(parents=True, exist_ok=True)
    write_split(out / "split.csv", split)
    log.info(
        "%d recordings of %d classes: %s",
        len(dataset.recordings),
        len(dataset.classes),
        ", ".join(f"{name} {len(recs)}" for name, recs in split.items()),
    )
    cache = FeatureCache(engine, options.cache or default_cache(), options.hop_s)
    extraction = cache.extract(dataset.recordings, "BirdNET features")
    columns = teacher_columns([sp.label for sp in base.species], dataset.labels)
    return Prepared(dataset, split, extraction, base, columns, data_hash(dataset.recordings, cache))
