"""Features of a split → window-level arrays with targets, and the teacher filter.

A xeno-canto recording labelled with a species is mostly not that species: silence, other
birds, the recordist's voice. Teacher filtering (BirdCLEF 2024's winner) keeps a window of a
labelled recording only where BirdNET (the teacher) gives the labelled species at least
``teacher_min``, and always the recording's best window for it, so every recording counts.
Dropped windows are not used as negatives either: the bird may still be there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from birdd.training.datasets.records import Recording
from birdd.training.features.embeddings import Features

SECONDARY_TARGET = 0.5  # a background species: heard somewhere in the recording, maybe not here


@dataclass
class WindowSet:
    """Windows of one split: embeddings, targets, a mask of the targets that count, and the
    recording each window came from (an index into ``recordings``)."""

    embeddings: np.ndarray  # float32[n, D]
    teacher: np.ndarray  # float32[n, K]: BirdNET's logits for the head's K classes
    targets: np.ndarray  # float32[n, K]
    recording: np.ndarray  # int[n]
    recordings: List[Recording]
    labels: Sequence[str] = ()

    def __len__(self) -> int:
        return len(self.embeddings)

    def recording_targets(self) -> np.ndarray:
        """``float32[R, K]``: 1 for a labelled class, 0.5 for a background one, else 0."""
        return np.stack([class_targets(rec, self.labels) for rec in self.recordings])


def class_targets(recording: Recording, labels: Sequence[str]) -> np.ndarray:
    target = np.zeros(len(labels), dtype=np.float32)
    for index, label in enumerate(labels):
        if label in recording.labels:
            target[index] = 1.0
        elif label in recording.secondary:
            target[index] = SECONDARY_TARGET
    return target


def teacher_columns(birdnet_labels: Sequence[str], labels: Sequence[str]) -> List[Optional[int]]:
    """For each head class, its column in BirdNET's output (None: a class BirdNET lacks)."""
    where = {label: index for index, label in enumerate(birdnet_labels)}
    return [where.get(label) for label in labels]


def teacher_logits(features: Features, columns: Sequence[Optional[int]]) -> np.ndarray:
    """BirdNET's logits for each target class (``columns``: its index in BirdNET's labels, or
    None for a class BirdNET lacks, whose column is NaN)."""
    out = np.full((features.windows, len(columns)), np.nan, dtype=np.float32)
    for k, column in enumerate(columns):
        if column is not None:
            out[:, k] = features.logits[:, column]
    return out


def keep_windows(teacher: np.ndarray, target: np.ndarray, teacher_min: float) -> np.ndarray:
    """Boolean mask over a recording's windows: where the teacher hears a labelled class at
    ``teacher_min`` or more, plus each labelled class's best window. All windows of a
    negative, or of a class the teacher does not know, are kept."""
    labelled = [k for k in np.flatnonzero(target >= 1.0) if not np.isnan(teacher[0, k])]
    if not labelled or teacher_min <= 0:
        return np.ones(len(teacher), dtype=bool)
    scores = 1.0 / (1.0 + np.exp(-teacher[:, labelled]))
    keep = (scores >= teacher_min).any(axis=1)
    keep[np.argmax(scores, axis=0)] = True
    return keep


def window_set(
    recordings: Sequence[Recording],
    features: Dict[str, Features],
    labels: Sequence[str],
    columns: Sequence[Optional[int]],
    teacher_min: float = 0.0,
) -> WindowSet:
    """The windows of ``recordings`` that have features (unreadable ones were skipped)."""
    kept_recordings = [rec for rec in recordings if rec.key in features]
    parts: Dict[str, list] = {"emb": [], "teacher": [], "target": [], "rec": []}
    for index, rec in enumerate(kept_recordings):
        feats = features[rec.key]
        teacher = teacher_logits(feats, columns)
        target = class_targets(rec, labels)
        keep = keep_windows(teacher, target, teacher_min)
        parts["emb"].append(feats.embeddings[keep])
        parts["teacher"].append(teacher[keep])
        parts["target"].append(np.repeat(target[None], int(keep.sum()), axis=0))
        parts["rec"].append(np.full(int(keep.sum()), index))
    dim = next(iter(features.values())).embeddings.shape[1] if features else 0
    if not kept_recordings:
        empty = np.zeros((0, len(labels)), np.float32)
        return WindowSet(np.zeros((0, dim), np.float32), empty, empty, np.zeros(0, int), [], labels)
    return WindowSet(
        np.concatenate(parts["emb"]),
        np.concatenate(parts["teacher"]),
        np.concatenate(parts["target"]),
        np.concatenate(parts["rec"]),
        kept_recordings,
        labels,
    )
