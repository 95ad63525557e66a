"""Detections as a Parquet file (pyarrow, the ``birdd[parquet]`` extra): one row per detection
with typed columns, for archives too large for text tables.

The columns are the JSON-lines record flattened (``Detection.to_record``), plus the run's id:
times as ``timestamp[ms, UTC]`` (the milliseconds the text formats print), confidence as
``float32``. Rows are written in row groups of ``ROW_GROUP_ROWS`` as they come (a
``ParquetWriter``), so a job of millions of detections holds at most one group in memory. The
file is written under a temporary name and renamed when the run ends, as the text outputs are.
"""

from __future__ import annotations

import importlib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Optional, Sequence

from birdd.daemon.records import Detection, RunInfo, check_end_status
from birdd.daemon.sinks.base import Sink, SinkError
from birdd.daemon.sinks.staged import finish, temporary_path

ROW_GROUP_ROWS = 65536
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MILLISECOND = timedelta(milliseconds=1)
MISSING = "--format parquet needs pyarrow: pip install 'birdd[parquet]'"


def import_pyarrow() -> ModuleType:
    """``pyarrow`` (with ``pyarrow.parquet`` loaded), or one line naming the extra."""
    try:
        importlib.import_module("pyarrow.parquet")
        return importlib.import_module("pyarrow")
    except ImportError:
        raise ValueError(MISSING) from None


def schema(pa: ModuleType) -> Any:
    """The columns, in ``row``'s order (built here: pyarrow is optional)."""
    text, time = pa.string(), pa.timestamp("ms", tz="UTC")
    return pa.schema(
        [
            ("id", text),
            ("run_id", text),
            ("station", text),
            ("source", text),
            ("channel", text),
            ("offset_start", pa.float64()),
            ("offset_end", pa.float64()),
            ("start", time),
            ("end", time),
            ("scientific", text),
            ("common", text),
            ("code", text),
            ("is_bird", pa.bool_()),
            ("confidence", pa.float32()),
            ("windows", pa.int32()),
            ("model_name", text),
            ("model_version", text),
            ("model_sha256", text),
            ("clip", text),
        ]
    )


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since 1970 UTC, cut as ``iso_utc`` cuts (exact integer arithmetic)."""
    return (moment.astimezone(timezone.utc) - EPOCH) // MILLISECOND


def row(detection: Detection, run_id: str) -> Dict[str, Any]:
    species, model = detection.species, detection.model
    return {
        "id": detection.id,
        "run_id": run_id,
        "station": detection.station,
        "source": detection.source,
        "channel": str(detection.channel),
        "offset_start": round(detection.offset_start, 3),
        "offset_end": round(detection.offset_end, 3),
        "start": epoch_ms(detection.start),
        "end": epoch_ms(detection.end),
        "scientific": species.scientific,
        "common": species.common,
        "code": species.code,
        "is_bird": species.is_bird,
        "confidence": detection.confidence,
        "windows": detection.windows,
        "model_name": model.get("name"),
        "model_version": model.get("version"),
        "model_sha256": model.get("sha256"),
        "clip": detection.clip.path if detection.clip is not None else None,
    }


class ParquetSink(Sink):
    """Writes one Parquet file, a row group per ``ROW_GROUP_ROWS`` detections."""

    def __init__(self, path: Path, row_group_rows: int = ROW_GROUP_ROWS) -> None:
        self._pa = import_pyarrow()
        self.path = Path(path)
        self.row_group_rows = row_group_rows
        self._schema = schema(self._pa)
        self._writer: Optional[Any] = None
        self._rows: List[Dict[str, Any]] = []
        self._run_id = ""

    @property
    def name(self) -> str:
        return f"parquet output to {self.path}"

    def open(self, run: RunInfo) -> None:
        if self.path.exists() and not self.path.is_file():
            raise SinkError(
                f"{self.path} is not a regular file (a directory, device or pipe): Parquet is "
                "written to a temporary file and renamed; give an output file path"
            )
        self._run_id = run.run_id
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            parquet = importlib.import_module("pyarrow.parquet")
            self._writer = parquet.ParquetWriter(str(temporary_path(self.path)), self._schema)
        except OSError as exc:
            raise SinkError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def write(self, detections: Sequence[Detection]) -> None:
        self._rows.extend(row(detection, self._run_id) for detection in detections)
        if len(self._rows) >= self.row_group_rows:
            self._flush()

    def close(self, status: str) -> None:
        check_end_status(status)
        finish(self.path, status, self._close_writer)

    def _close_writer(self) -> None:
        self._flush()
        self._require_writer().close()

    def _flush(self) -> None:
        if not self._rows:
            return
        table = self._pa.Table.from_pylist(self._rows, schema=self._schema)
        self._require_writer().write_table(table, row_group_size=len(self._rows))
        self._rows = []

    def _require_writer(self) -> Any:
        if self._writer is None:
            raise RuntimeError("ParquetSink used before open()")
        return self._writer
