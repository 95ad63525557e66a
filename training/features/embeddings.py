"""BirdNET embeddings and logits per window, computed once through the real engine and cached.

The cache key is the audio file's hash, the model file's hash, the window and hop, and the
segment: change any of them and the features are computed again; rename or move a file and
they are not. Each entry holds the 1024-d embeddings (what a head learns on) and BirdNET's
logits for the same windows (the teacher's scores: the report compares with them, teacher
filtering and distillation use them), as float16 to keep the cache small.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from birdd.engines.base import Engine
from birdd.engines.models.artifact import file_sha256
from birdd.training.datasets.records import Recording
from birdd.training.features.audio import AudioError, read_mono, recording_windows, segment_audio
from birdd.training.progress import Progress

log = logging.getLogger("birdd.training")


@dataclass(frozen=True)
class Features:
    """Per window of one recording: the embedding and BirdNET's logits."""

    embeddings: np.ndarray  # float32[n, D]
    logits: np.ndarray  # float32[n, C] over BirdNET's classes

    @property
    def windows(self) -> int:
        return len(self.embeddings)


@dataclass
class Extraction:
    features: Dict[str, Features]  # by Recording.key
    skipped: List[Tuple[str, str]]  # (path, why): unreadable files, listed in the report


def score_windows(engine: Engine, windows: np.ndarray) -> Features:
    """Embeddings and logits of ``windows`` in batches of the engine's size."""
    batch = engine.input_spec.max_batch
    embeddings, logits = [], []
    for start in range(0, len(windows), batch):
        chunk = windows[start : start + batch]
        outputs = engine.infer(chunk)  # one run of the model for both
        embeddings.append(outputs.embeddings)
        logits.append(outputs.scores)
    return Features(np.concatenate(embeddings), np.concatenate(logits))


class FeatureCache:
    """Features of recordings through one engine, at one hop, cached in ``folder``."""

    def __init__(self, engine: Engine, folder: Path, hop_s: float) -> None:
        self.engine = engine
        self.folder = folder
        spec = engine.input_spec
        self.rate, self.window = spec.sample_rate, spec.window_samples
        self.hop = max(1, round(hop_s * spec.sample_rate))
        self._file_hashes: Dict[str, str] = {}
        folder.mkdir(parents=True, exist_ok=True)

    def key(self, recording: Recording) -> str:
        path = str(recording.path)
        if path not in self._file_hashes:
            self._file_hashes[path] = file_sha256(recording.path)
        parts = [
            self._file_hashes[path],
            self.engine.artifact.sha256,
            f"{self.rate}/{self.window}/{self.hop}",
            f"{recording.start_s}-{recording.end_s}",
        ]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]

    def _load(self, entry: Path) -> Optional[Features]:
        try:
            with np.load(entry) as data:
                return Features(
                    data["embeddings"].astype(np.float32), data["logits"].astype(np.float32)
                )
        except (OSError, KeyError, ValueError):
            return None  # a partial or foreign file: computed again

    def _save(self, entry: Path, features: Features) -> None:
        partial = entry.with_suffix(".partial.npz")
        np.savez(
            partial,
            embeddings=features.embeddings.astype(np.float16),
            logits=features.logits.astype(np.float16),
        )
        partial.replace(entry)

    def features(self, recording: Recording, audio: Optional[np.ndarray] = None) -> Features:
        entry = self.folder / f"{self.key(recording)}.npz"
        cached = self._load(entry) if entry.is_file() else None
        if cached is not None:
            return cached
        windows = recording_windows(recording, self.rate, self.window, self.hop, audio)
        computed = score_windows(self.engine, windows)
        self._save(entry, computed)
        # What is returned went through float16 like what a later run reads from the cache.
        return self._load(entry) or computed

    def derived(
        self,
        recording: Recording,
        tag: str,
        make: Callable[[np.ndarray], np.ndarray],
        audio: Optional[np.ndarray] = None,
    ) -> Features:
        """Features of the windows ``make`` derives from the recording's audio (or segment) at
        the model's rate, e.g. padded crops; cached under the recording's key and ``tag``,
        which must name everything ``make`` depends on."""
        digest = hashlib.sha256(f"{self.key(recording)}|{tag}".encode()).hexdigest()[:32]
        entry = self.folder / f"{digest}.npz"
        cached = self._load(entry) if entry.is_file() else None
        if cached is not None:
            return cached
        if audio is None:
            audio = read_mono(str(recording.path), self.rate)
        windows = make(segment_audio(audio, recording, self.window, self.rate))
        computed = score_windows(self.engine, windows)
        self._save(entry, computed)
        return self._load(entry) or computed

    def extract(self, recordings: Sequence[Recording], label: str = "features") -> Extraction:
        """Features of every recording; an unreadable one is skipped, logged and listed."""
        result = Extraction({}, [])
        progress = Progress(label, len(recordings))
        decoded: Tuple[str, Optional[np.ndarray]] = ("", None)
        for recording in recordings:
            try:
                if recording.start_s is not None and decoded[0] != str(recording.path):
                    decoded = (str(recording.path), read_mono(str(recording.path), self.rate))
                audio = decoded[1] if recording.start_s is not None else None
                result.features[recording.key] = self.features(recording, audio)
            except (AudioError, OSError) as exc:
                log.warning("skipped %s: %s", recording.path, exc)
                result.skipped.append((str(recording.path), str(exc)))
            progress.step()
        progress.done()
        return result
