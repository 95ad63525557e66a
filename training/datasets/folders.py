"""BirdNET-Analyzer's folder-per-class convention, and plain folders of negatives.

``DATA/Genus species_Common name/*.wav`` holds recordings of one class; a folder name with
commas (``A_a,B_b``) holds recordings of several; ``-Genus species_Common name`` holds
recordings that are NOT that class; ``noise``, ``other``, ``background`` and ``silence``
(any case, also as a prefix such as ``Noise_Noise``) hold recordings with no bird at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

from birdd.training.datasets.records import (
    NON_EVENT_NAMES,
    DatasetError,
    Recording,
    audio_files,
)


def is_non_event(name: str) -> bool:
    head = name.split("_")[0].strip().casefold()
    return head in NON_EVENT_NAMES


def _folder_recordings(folder: Path) -> List[Recording]:
    files = audio_files(folder)
    if not files:
        raise DatasetError(
            f"class folder {folder} holds no audio files (.wav .flac .mp3 .ogg .opus): add "
            "recordings or remove the folder"
        )
    name = folder.name
    if is_non_event(name):
        return [Recording(path, group=f"{name}/{path.stem}") for path in files]
    if name.startswith("-"):
        excluded = tuple(part.strip() for part in name[1:].split(",") if part.strip())
        return [Recording(path, excluded=excluded, group=path.stem) for path in files]
    labels = tuple(part.strip() for part in name.split(",") if part.strip())
    return [Recording(path, labels=labels, group=path.stem) for path in files]


def read_class_folders(root: Path) -> List[Recording]:
    """One recording per audio file in each class folder of ``root``.

    Folders carry no recordist, so each recording is its own group: a split can then only
    keep a recording's windows together. Prefer a ``labels.csv`` with a recordist column.
    """
    folders = sorted(path for path in root.iterdir() if path.is_dir())
    if not folders:
        raise DatasetError(
            f"{root} has no class folders: lay the data out as DATA/<Genus species_Common "
            "name>/<recordings>, or give a labels CSV"
        )
    recordings: List[Recording] = []
    for folder in folders:
        recordings.extend(_folder_recordings(folder))
    return recordings


def read_negative_folder(root: Path) -> List[Recording]:
    """Every audio file under ``root`` as a recording with no bird, grouped by file stem."""
    files = audio_files(root)
    if not files:
        raise DatasetError(f"negatives folder {root} holds no audio files: check the path")
    return [Recording(path, group=f"{path.parent.name}/{path.stem}") for path in files]
