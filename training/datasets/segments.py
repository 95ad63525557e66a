"""Time-segment annotations of longer recordings: Raven selection tables and Audacity label
files, each beside its recording (``X.Table.1.selections.txt`` or ``X.txt`` for ``X.wav``)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Optional

from birdd.training.datasets.folders import is_non_event
from birdd.training.datasets.records import AUDIO_SUFFIXES, DatasetError, Recording

RAVEN_LABEL_COLUMNS = ("Species", "Annotation", "Label", "Class", "Common Name", "Species Code")
RAVEN_SUFFIX = ".selections.txt"


def _segment(audio: Path, start: float, end: float, label: str, group: str) -> Recording:
    if end <= start:
        raise DatasetError(
            f"annotation of {audio.name} has a segment ending before it begins ({start}-{end} s)"
        )
    labels = () if is_non_event(label) else (label.strip(),)
    return Recording(audio, labels=labels, group=group, start_s=start, end_s=end)


def _raven_label(row: Dict[str, str], table: Path) -> str:
    for column in RAVEN_LABEL_COLUMNS:
        if (row.get(column) or "").strip():
            return row[column]
    raise DatasetError(
        f"Raven table {table} has a selection without a label: expected a column named one "
        f"of {', '.join(RAVEN_LABEL_COLUMNS)}"
    )


def read_raven_table(table: Path, audio: Path, group: str = "") -> List[Recording]:
    """A Raven selection table: one segment per selection (waveform duplicates dropped)."""
    try:
        with table.open(newline="", encoding="utf-8") as stream:
            rows = list(csv.DictReader(stream, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read Raven table {table} ({exc})") from None
    seen = set()
    segments = []
    for row in rows:
        if "Waveform" in (row.get("View") or ""):
            continue
        selection = row.get("Selection") or str(len(seen))
        if selection in seen:
            continue
        seen.add(selection)
        try:
            start, end = float(row["Begin Time (s)"]), float(row["End Time (s)"])
        except (KeyError, TypeError, ValueError):
            raise DatasetError(
                f"Raven table {table} lacks numeric 'Begin Time (s)'/'End Time (s)' columns"
            ) from None
        label = _raven_label(row, table)
        segments.append(_segment(audio, start, end, label, group or audio.stem))
    return segments


def read_audacity_labels(labels: Path, audio: Path, group: str = "") -> List[Recording]:
    """An Audacity label track export: ``start<TAB>end<TAB>label`` per line; the spectral
    lines (starting with a backslash) are skipped."""
    try:
        lines = labels.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read Audacity labels {labels} ({exc})") from None
    segments = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("\\"):
            continue
        parts = line.split("\t")
        try:
            start, end, label = float(parts[0]), float(parts[1]), parts[2]
        except (IndexError, ValueError):
            raise DatasetError(
                f"{labels}:{number} is not an Audacity label line (start<TAB>end<TAB>label)"
            ) from None
        segments.append(_segment(audio, start, end, label, group or audio.stem))
    return segments


def _audio_beside(annotation: Path, stem: str) -> Optional[Path]:
    for suffix in AUDIO_SUFFIXES:
        candidate = annotation.with_name(stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def read_annotated_folder(folder: Path) -> List[Recording]:
    """Every Raven table and Audacity label file in ``folder`` that has a recording beside it."""
    segments: List[Recording] = []
    for table in sorted(folder.glob("*" + RAVEN_SUFFIX)):
        stem = table.name[: -len(RAVEN_SUFFIX)].split(".Table.")[0]
        audio = _audio_beside(table, stem)
        if audio is None:
            raise DatasetError(f"Raven table {table} has no recording {stem}.wav/.flac beside it")
        segments.extend(read_raven_table(table, audio))
    for labels in sorted(folder.glob("*.txt")):
        if labels.name.endswith(RAVEN_SUFFIX):
            continue
        audio = _audio_beside(labels, labels.stem)
        if audio is not None:
            segments.extend(read_audacity_labels(labels, audio))
    return segments


def has_annotations(folder: Path) -> bool:
    return any(folder.glob("*" + RAVEN_SUFFIX)) or any(
        _audio_beside(path, path.stem) for path in folder.glob("*.txt")
    )
