"""The clips' SQL, shared by both backends (a mixin of ``SqlStore``): one row per detection id,
inserted once (``ON CONFLICT DO NOTHING``: two uploads of the same clip, even at once, store
one row)."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from birdd.hub.store.base import ClipRow, HeldClip

T = TypeVar("T")
COLUMNS = "detection_id, station, sha256, size, duration_s, sample_rate, received_ms"
INSERT = f"""INSERT INTO clips ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (detection_id) DO NOTHING"""
HELD = """SELECT c.detection_id, c.station, c.sha256, c.size,
    COALESCE(d.start_ms, c.received_ms), COALESCE(d.scientific, ''), d.confidence
    FROM clips c LEFT JOIN detections d ON d.id = c.detection_id"""
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

    def held_clips(self) -> List[HeldClip]:
        def work(conn: Any) -> List[HeldClip]:
            return [
                HeldClip(r[0], r[1], r[2], int(r[3]), int(r[4]), r[5], _number(r[6]))
                for r in self._rows(conn, HELD)
            ]

        return self._run(False, work)

    def forget_clips(self, detection_ids: List[str]) -> None:
        def work(conn: Any) -> None:
            for start in range(0, len(detection_ids), CHUNK):
                chunk = detection_ids[start : start + CHUNK]
                marks = ", ".join("?" * len(chunk))
                self._execute(conn, f"DELETE FROM clips WHERE detection_id IN ({marks})", chunk)

        self._run(True, work)

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


def _number(value: Any) -> Optional[float]:
    return None if value is None else float(value)
