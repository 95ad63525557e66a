"""The gate's training windows: bird / no-bird targets from labels, the teacher and padding.

A window of a bird recording is a positive where the teacher filter keeps it (BirdNET hears
the labelled species) or where BirdNET's top bird score is ``weak_min`` or more (any bird: the
recordings hold other species, and unlabelled bird audio such as soundscapes counts too); the
rest of a bird recording is dropped, neither bird nor no bird. Every window of a negative is a
no-bird window.

Padded crops: a file shorter than a window reaches the model as its audio followed by zeros
(daemon/pipeline/windower.py), and such a window's embedding is closer to quiet audio than to
any full window of bird song. Each window is therefore also cut to a random 0.25–3 s piece
placed at the start of a zeroed window, scored by BirdNET, and labelled by the same rules.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from birdd.engines.models.labels import Species
from birdd.training.datasets.records import DatasetError, Recording, audio_files
from birdd.training.features.audio import MIN_TAIL_S, AudioError
from birdd.training.features.embeddings import FeatureCache, Features
from birdd.training.progress import Progress
from birdd.training.recipes.targets import WindowSet, class_targets, keep_windows, teacher_logits

log = logging.getLogger("birdd.training")

UNLABELLED = "unlabelled:"  # group prefix of unlabelled bird recordings (not negatives)


@dataclass
class GateData:
    """How the gate's targets are made (see the module's docstring)."""

    teacher_min: float = 0.1
    weak_min: float = 0.5  # BirdNET's top bird score that makes any bird-audio window a positive
    crops: int = 1  # padded crops per window (0: none)
    crop_min_s: float = 0.25
    crop_max_s: float = 3.0


class BirdWindows(WindowSet):
    """Windows with one target: 1 bird, 0 no bird."""

    def recording_targets(self) -> np.ndarray:
        """A recording is bird if any of its windows is."""
        out = np.zeros((len(self.recordings), 1), dtype=np.float32)
        np.maximum.at(out, self.recording, self.targets)
        return out


def bird_columns(species: Sequence[Species]) -> np.ndarray:
    """Boolean mask of the base model's bird classes."""
    return np.array([sp.is_bird for sp in species], dtype=bool)


def top_bird(logits: np.ndarray, birds: np.ndarray) -> np.ndarray:
    """BirdNET's highest bird probability per window."""
    top = logits[:, birds].max(axis=1)
    return 1.0 / (1.0 + np.exp(-np.clip(top, -60, 60)))


def window_targets(
    features: Features,
    recording: Recording,
    labels: Sequence[str],
    columns: Sequence[Optional[int]],
    birds: np.ndarray,
    data: GateData,
) -> np.ndarray:
    """Per window 1 (bird), 0 (no bird) or NaN (dropped), by the rules above."""
    if recording.is_negative and not recording.group.startswith(UNLABELLED):
        return np.zeros(features.windows, dtype=np.float32)
    heard = top_bird(features.logits, birds) >= data.weak_min
    if recording.labels:
        target = class_targets(recording, labels)
        heard |= keep_windows(teacher_logits(features, columns), target, data.teacher_min)
    return np.where(heard, 1.0, np.nan).astype(np.float32)


def unlabelled_recordings(folders: Sequence[Path]) -> List[Recording]:
    """The audio files under ``folders`` as unlabelled bird recordings, told apart from
    negatives by their group."""
    recordings = []
    for folder in folders:
        files = audio_files(folder) if folder.is_dir() else []
        if not files:
            raise DatasetError(
                f"--unlabelled {folder} is not a folder of recordings (.wav .flac .mp3 .ogg "
                ".opus): give folders of bird audio without labels"
            )
        recordings += [Recording(path, group=f"{UNLABELLED}{path}") for path in files]
    return recordings


def padded_crops(
    audio: np.ndarray, window: int, hop: int, rate: int, rng: np.random.Generator, data: GateData
) -> np.ndarray:
    """``data.crops`` crops of each window (windows cut as audio.cut_windows does), each a
    random piece of ``crop_min_s``–``crop_max_s`` of the window's audio at the start of a
    zeroed window: how the pipeline pads a file shorter than a window."""
    min_tail = min(window, int(MIN_TAIL_S * rate))
    crops = []
    start = 0
    while start < len(audio):
        chunk = audio[start : start + window]
        if crops and len(chunk) < min_tail:
            break
        for _ in range(data.crops):
            length = min(len(chunk), round(rng.uniform(data.crop_min_s, data.crop_max_s) * rate))
            offset = int(rng.integers(0, len(chunk) - length + 1))
            padded = np.zeros(window, dtype=np.float32)
            padded[:length] = chunk[offset : offset + length]
            crops.append(padded)
        start += hop
    return np.stack(crops) if crops else np.zeros((0, window), dtype=np.float32)


def crop_features(
    cache: FeatureCache, recordings: Sequence[Recording], data: GateData
) -> Dict[str, Features]:
    """Padded crops' features of each recording, cached; unreadable recordings are skipped
    (prepare already listed them)."""
    tag = f"padded-crops/{data.crops}/{data.crop_min_s}-{data.crop_max_s}/v1"
    out: Dict[str, Features] = {}
    if data.crops <= 0:
        return out
    progress = Progress("padded crops", len(recordings))
    for recording in recordings:
        seed = int.from_bytes(hashlib.sha256(recording.key.encode()).digest()[:4], "little")
        rng = np.random.default_rng(seed)

        def make(audio: np.ndarray, rng: np.random.Generator = rng) -> np.ndarray:
            return padded_crops(audio, cache.window, cache.hop, cache.rate, rng, data)

        try:
            out[recording.key] = cache.derived(recording, tag, make)
        except (AudioError, OSError) as exc:
            log.warning("no padded crops of %s: %s", recording.path, exc)
        progress.step()
    progress.done()
    return out


def gate_windows(
    recordings: Sequence[Recording],
    sources: Sequence[Dict[str, Features]],
    labels: Sequence[str],
    columns: Sequence[Optional[int]],
    birds: np.ndarray,
    data: GateData,
) -> BirdWindows:
    """The windows of ``recordings`` in every feature source (the windows, their padded
    crops) that have a target; the teacher column of a gate is unused (NaN)."""
    kept: List[Recording] = []
    parts: Dict[str, list] = {"emb": [], "target": [], "rec": []}
    for recording in recordings:
        found = [source[recording.key] for source in sources if recording.key in source]
        if not found:
            continue
        for features in found:
            target = window_targets(features, recording, labels, columns, birds, data)
            keep = ~np.isnan(target)
            parts["emb"].append(features.embeddings[keep])
            parts["target"].append(target[keep, None])
            parts["rec"].append(np.full(int(keep.sum()), len(kept)))
        kept.append(recording)
    if not kept:
        raise ValueError("no window with features for the gate: check the data")
    embeddings = np.concatenate(parts["emb"]).astype(np.float32)
    targets = np.concatenate(parts["target"]).astype(np.float32)
    no_teacher = np.full((len(targets), 1), np.nan, dtype=np.float32)
    recording = np.concatenate(parts["rec"])
    return BirdWindows(embeddings, no_teacher, targets, recording, kept, ["bird"])
