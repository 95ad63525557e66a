"""What every dataset parser produces: labelled recordings (or segments of them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus")
# BirdNET-Analyzer's non-event folder names: their audio is "no bird", not a class.
NON_EVENT_NAMES = ("noise", "other", "background", "silence")


class DatasetError(ValueError):
    """Bad training data: one line naming the problem and the fix."""


@dataclass(frozen=True)
class Recording:
    """One labelled recording, or one segment of it when ``start_s``/``end_s`` are set.

    ``labels`` are the classes heard (raw names until mapped, then BirdNET's
    ``Genus species_Common name`` where BirdNET has the species); empty for a negative.
    ``secondary`` are background species, ``excluded`` classes it is a negative for
    (BirdNET-Analyzer's ``-Name`` folders), ``group`` whom the split keeps together (the
    recordist, or the source recording of a clip), ``credit`` the attribution its licence asks.
    """

    path: Path
    labels: Tuple[str, ...] = ()
    secondary: Tuple[str, ...] = ()
    excluded: Tuple[str, ...] = ()
    group: str = ""
    start_s: Optional[float] = None
    end_s: Optional[float] = None
    credit: str = ""

    @property
    def is_negative(self) -> bool:
        return not self.labels

    @property
    def key(self) -> str:
        """Identifies the recording or segment in split.csv and the caches."""
        if self.start_s is None:
            return str(self.path)
        return f"{self.path}#{self.start_s:.3f}-{self.end_s:.3f}"


def is_audio(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES


def audio_files(folder: Path) -> list:
    """Audio files under ``folder`` (recursively), sorted for reproducible runs."""
    return sorted(path for path in folder.rglob("*") if is_audio(path))
