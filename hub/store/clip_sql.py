"""The clips' SQL, shared by both backends (a mixin of ``SqlStore``): one row per detection id,
inserted once (``ON CONFLICT DO NOTHING``: two uploads of the same clip, even at once, store
one row)."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Callable, Dict, List, Sequence, Tuple, TypeVar

from birdd.hub.store.base import ClipRow

T = TypeVar("T")
COLUMNS = "detection_id, station, sha256, size, duration_s, sample_rate, received_ms"
INSERT = f"""INSERT INTO clips ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (detection_id) DO NOTHING"""
CHUNK = 500
"""Ids per ``IN (…)`` (one page of detections is at most 1000)."""


class ClipSql:
    @abstractmethod
    def _run(self, write: bool, work: Callable[[Any], T]) -> T: ...

    @abstractmethod
    def _rows(self, conn: Any, statement: str, params: Sequence[Any] = ()) -> List[Tuple]: ...

    @abstractmethod
    def _execute(self, conn: Any, statement: str, params: Sequence[Any] = ()) -> None: ...

    def add_clip(self, clip: ClipRow) -> Tuple[ClipRow, bool]:
        def work(conn: Any) -> Tuple[ClipRow, bool]:
            values = (clip.detection_id, clip.station, clip.sha256, clip.size)
            self._execute(
                conn, INSERT, (*values, clip.duration_s, clip.sample_rate, clip.received_ms)
            )
            stored = self._select(conn, [clip.detection_id])[clip.detection_id]
            return stored, stored == clip

        return self._run(True, work)

    def clips(self, detection_ids: List[str]) -> Dict[str, ClipRow]:
        return self._run(False, lambda conn: self._select(conn, detection_ids))

    def _select(self, conn: Any, detection_ids: List[str]) -> Dict[str, ClipRow]:
        found: Dict[str, ClipRow] = {}
        for start in range(0, len(detection_ids), CHUNK):
            chunk = detection_ids[start : start + CHUNK]
            marks = ", ".join("?" * len(chunk))
            statement = f"SELECT {COLUMNS} FROM clips WHERE detection_id IN ({marks})"
            for r in self._rows(conn, statement, chunk):
                row = ClipRow(r[0], r[1], r[2], int(r[3]), float(r[4]), int(r[5]), int(r[6]))
                found[row.detection_id] = row
        return found
