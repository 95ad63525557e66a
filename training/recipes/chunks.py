"""Training examples for the student recipes: 3 s chunks of raw audio with their targets and
BirdNET's logits (the teacher), drawn at a random offset around each cached teacher window.

Teacher filtering: a chunk of a labelled recording is kept only where BirdNET's top target
species is one of its labels (and BirdNET gives it at least ``teacher_min``); each labelled
recording keeps its best window. Pseudo-labels: windows of unlabelled audio have the teacher's
logits and no labels; they count with a small sample weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from birdd.training.augment import AugmentOptions, augment
from birdd.training.datasets.records import Recording
from birdd.training.features.audio import read_mono, segment_audio
from birdd.training.features.embeddings import Features
from birdd.training.recipes.targets import class_targets, keep_windows, teacher_logits


@dataclass
class Chunks:
    """One row per training window: where it is, what it is, and how much it counts."""

    recording: np.ndarray  # int[n]: index into ``audio``
    start: np.ndarray  # int[n]: the teacher window's first sample
    teacher: np.ndarray  # float32[n, K], NaN where BirdNET lacks the class
    targets: np.ndarray  # float32[n, K]
    labelled: np.ndarray  # bool[n]: False for pseudo-labelled windows
    weight: np.ndarray  # float32[n]
    negative: np.ndarray  # bool[n]: windows of negatives (their audio is mixed as background)

    def __len__(self) -> int:
        return len(self.start)


def agreeing_windows(teacher: np.ndarray, target: np.ndarray, teacher_min: float) -> np.ndarray:
    """``keep_windows`` further limited to windows whose top target species (by the teacher)
    is a labelled one; each labelled class's best window stays."""
    keep = keep_windows(teacher, target, teacher_min)
    labelled = [k for k in np.flatnonzero(target >= 1.0) if not np.isnan(teacher[0, k])]
    if not labelled or teacher_min <= 0:
        return keep
    top = np.argmax(np.nan_to_num(teacher, nan=-np.inf), axis=1)
    best = np.argmax(teacher[:, labelled], axis=0)
    keep &= np.isin(top, labelled)
    keep[best] = True
    return keep


def decode(recordings: Sequence[Recording], rate: int, window: int) -> List[np.ndarray]:
    """Each recording's (or segment's) audio at ``rate``, as the feature cache cut it."""
    return [segment_audio(read_mono(str(rec.path), rate), rec, window, rate) for rec in recordings]


def build_chunks(
    recordings: Sequence[Recording],
    features: Dict[str, Features],
    labels: Sequence[str],
    columns: Sequence[Optional[int]],
    hop: int,
    teacher_min: float,
    pseudo_weight: float = 0.0,
) -> Chunks:
    """Chunks of ``recordings`` (indexed as given; those without features are skipped).
    A recording with ``pseudo_weight`` > 0 is unlabelled audio: every window is kept."""
    parts: Dict[str, list] = {k: [] for k in ("rec", "start", "t", "y", "lab", "w", "neg")}
    for index, rec in enumerate(recordings):
        if rec.key not in features:
            continue
        teacher = teacher_logits(features[rec.key], columns)
        target = class_targets(rec, labels)
        keep = np.ones(len(teacher), bool) if pseudo_weight else None
        keep = keep if keep is not None else agreeing_windows(teacher, target, teacher_min)
        rows = np.flatnonzero(keep)
        parts["rec"].append(np.full(len(rows), index))
        parts["start"].append(rows * hop)
        parts["t"].append(teacher[rows])
        parts["y"].append(np.repeat(target[None], len(rows), axis=0))
        parts["lab"].append(np.full(len(rows), not pseudo_weight))
        parts["w"].append(np.full(len(rows), pseudo_weight or 1.0, np.float32))
        parts["neg"].append(np.full(len(rows), rec.is_negative and not pseudo_weight))
    return Chunks(
        *(np.concatenate(parts[k]) for k in ("rec", "start", "t", "y", "lab", "w", "neg"))
    )


def concat(first: Chunks, second: Chunks, offset: int) -> Chunks:
    """``second``'s rows after ``first``'s, its recording indices shifted by ``offset``."""
    return Chunks(
        np.concatenate([first.recording, second.recording + offset]),
        *(np.concatenate([getattr(first, f), getattr(second, f)])
          for f in ("start", "teacher", "targets", "labelled", "weight", "negative")),
    )  # fmt: skip


def crop(audio: np.ndarray, start: int, window: int) -> np.ndarray:
    out = np.zeros(window, dtype=np.float32)
    piece = audio[max(0, start) : max(0, start) + window]
    out[: len(piece)] = piece
    return out


class ChunkDataset(torch.utils.data.Dataset):
    """Augmented raw chunks; the epoch's seed is set through ``set_epoch`` before iterating."""

    def __init__(
        self, chunks: Chunks, audio: List[np.ndarray], rate: int, window: int,
        options: AugmentOptions, seed: int,
    ) -> None:  # fmt: skip
        self.chunks, self.audio, self.rate, self.window = chunks, audio, rate, window
        self.options, self.seed, self.epoch = options, seed, 0
        self.negatives = np.flatnonzero(chunks.negative)

    def __len__(self) -> int:
        return len(self.chunks)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        c = self.chunks
        shift = int(rng.uniform(-1, 1) * self.options.shift_s * self.rate)
        audio = self.audio[c.recording[index]]
        start = int(np.clip(c.start[index] + shift, 0, max(0, len(audio) - self.window)))
        window = crop(audio, start, self.window)
        background = None
        if len(self.negatives) and not c.negative[index]:
            other = int(rng.choice(self.negatives))
            background = crop(self.audio[c.recording[other]], c.start[other], self.window)
        window = augment(window, self.rate, self.options, rng, background)
        return (
            torch.from_numpy(window),
            torch.from_numpy(c.teacher[index]),
            torch.from_numpy(c.targets[index]),
            bool(c.labelled[index]),
            float(c.weight[index]),
        )
