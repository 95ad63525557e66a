"""Label tables: a BirdCLEF-style CSV, the xeno-canto ``labels.csv`` of the shared data, and a
negatives ``labels.csv`` (file, class, source id). Paths in a table are relative to it."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from birdd.training.datasets.records import DatasetError, Recording

BIRDCLEF_COLUMNS = ("filename", "primary_label")
XC_COLUMNS = ("file", "scientific", "recordist")
NEGATIVE_COLUMNS = ("file", "source_id")


def read_rows(table: Path) -> Tuple[List[str], List[Dict[str, str]]]:
    try:
        with table.open(newline="", encoding="utf-8") as stream:
            reader = csv.DictReader(stream)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read label table {table} ({exc})") from None


def split_list(text: str) -> Tuple[str, ...]:
    """``"['a', 'b']"`` (BirdCLEF), ``"a;b"`` (labels.csv) or ``"a b"`` → ``("a", "b")``."""
    text = text.strip().strip("[]")
    if not text:
        return ()
    if "'" in text or '"' in text:
        return tuple(re.findall(r"['\"]([^'\"]+)['\"]", text))
    separator = ";" if ";" in text else "," if "," in text else None
    return tuple(part.strip() for part in text.split(separator) if part.strip())


def _audio_path(table: Path, name: str) -> Path:
    """Paths are relative to the table; BirdCLEF keeps them under ``train_audio/``."""
    for candidate in (table.parent / name, table.parent / "train_audio" / name):
        if candidate.is_file():
            return candidate
    return table.parent / name  # reported as unreadable when its features are extracted


def _require(table: Path, columns: Sequence[str], found: Sequence[str]) -> None:
    missing = [column for column in columns if column not in found]
    if missing:
        raise DatasetError(
            f"label table {table} lacks column(s) {', '.join(missing)}: expected "
            f"{', '.join(columns)} (found {', '.join(found) or 'none'})"
        )


def read_birdclef_csv(table: Path) -> List[Recording]:
    """``filename,primary_label,secondary_labels[,author]``: one recording per row."""
    columns, rows = read_rows(table)
    _require(table, BIRDCLEF_COLUMNS, columns)
    recordings = []
    for row in rows:
        path = _audio_path(table, row["filename"])
        recordings.append(
            Recording(
                path,
                labels=(row["primary_label"].strip(),),
                secondary=split_list(row.get("secondary_labels", "") or ""),
                group=(row.get("author") or "").strip() or path.stem,
                credit=(row.get("author") or "").strip(),
            )
        )
    return recordings


def _xc_credit(row: Dict[str, str]) -> str:
    licence = (row.get("licence") or "").strip()
    xc = (row.get("xc_id") or "").strip()
    number = f"XC{xc}" if xc else Path(row["file"]).stem
    return f"{number} by {row['recordist'].strip()}" + (f" ({licence})" if licence else "")


def read_xc_labels(table: Path) -> List[Recording]:
    """The shared xeno-canto ``labels.csv``: file, scientific, recordist, background, …"""
    columns, rows = read_rows(table)
    _require(table, XC_COLUMNS, columns)
    return [
        Recording(
            _audio_path(table, row["file"]),
            labels=(row["scientific"].strip(),),
            secondary=split_list(row.get("background", "") or ""),
            group=row["recordist"].strip(),
            credit=_xc_credit(row),
        )
        for row in rows
    ]


def read_negative_labels(table: Path) -> List[Recording]:
    """A negatives table (``file,class,source_id``): clips cut from one source recording are
    one group, so no source lands in two splits."""
    columns, rows = read_rows(table)
    _require(table, NEGATIVE_COLUMNS, columns)
    return [
        Recording(_audio_path(table, row["file"]), group=f"source:{row['source_id'].strip()}")
        for row in rows
    ]


def table_kind(table: Path) -> str:
    """Which of the table formats this CSV is, from its header."""
    columns, _ = read_rows(table)
    for kind, wanted in (
        ("birdclef", BIRDCLEF_COLUMNS),
        ("xc", XC_COLUMNS),
        ("negatives", NEGATIVE_COLUMNS),
    ):
        if all(column in columns for column in wanted):
            return kind
    raise DatasetError(
        f"label table {table} is not a known format: expected columns "
        f"{','.join(BIRDCLEF_COLUMNS)} (BirdCLEF), {','.join(XC_COLUMNS)} (xeno-canto) or "
        f"{','.join(NEGATIVE_COLUMNS)} (negatives); found {','.join(columns) or 'none'}"
    )
