"""Parquet rows (``daemon/sinks/parquet.py``) and JSON-lines records side by side: both as the
same flat dicts, with confidence kept apart (JSON lines round it to 4 places, Parquet keeps
the float32)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

from birdd.daemon.records import iso_utc

Flat = Tuple[Dict[str, Any], float]
FLAT_KEYS = (
    "source",
    "station",
    "channel",
    "offset_start",
    "offset_end",
    "start",
    "end",
    "scientific",
    "common",
    "code",
    "is_bird",
    "windows",
    "model_name",
    "model_version",
    "model_sha256",
)


def from_record(record: Dict[str, Any]) -> Flat:
    species, model = record["species"], record["model"]
    row = {
        "source": record["source"],
        "station": record["station"],
        "channel": str(record["channel"]),
        "offset_start": record["offset_start"],
        "offset_end": record["offset_end"],
        "start": record["start"],
        "end": record["end"],
        "scientific": species["scientific"],
        "common": species["common"],
        "code": species["code"],
        "is_bird": record["is_bird"],
        "windows": record["windows"],
        "model_name": model["name"],
        "model_version": model["version"],
        "model_sha256": model["sha256"],
    }
    return row, record["confidence"]


def from_parquet_row(row: Dict[str, Any]) -> Flat:
    flat = {key: row[key] for key in FLAT_KEYS}
    flat["start"], flat["end"] = iso_utc(row["start"]), iso_utc(row["end"])
    return flat, row["confidence"]


def read_parquet(path: Path) -> List[Dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(str(path)).to_pylist()


def assert_same(parquet: List[Dict[str, Any]], records: List[Dict[str, Any]]) -> None:
    """The Parquet rows are the JSON-lines records, in the same order."""
    assert len(parquet) == len(records)
    for row, record in zip(parquet, records):
        (got, confidence), (want, rounded) = from_parquet_row(row), from_record(record)
        assert got == want
        assert abs(confidence - rounded) <= 5.01e-5  # float32 against 4 decimal places
