"""The MQTT outbox's view of the detection database: unpublished rows in rowid order.

A row is unpublished while ``published_at`` is NULL; the partial index ``detections_unpublished``
keeps both the scan and the count cheap however many published rows the table holds. The
outbox opens its own connection (WAL lets it read while the sink writes) and is the only code
that sets ``published_at``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

from birdd.daemon.records import iso_utc
from birdd.daemon.store.sqlite_store import SQLiteStore

_UNPUBLISHED = "FROM detections WHERE published_at IS NULL"


class OutboxRow(NamedTuple):
    rowid: int
    station: str
    record_json: str


class OutboxStore(SQLiteStore):
    def last_rowid(self) -> int:
        """The newest row's rowid (0 for an empty table)."""
        with self._errors():
            row = self._conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM detections").fetchone()
        return int(row[0])

    def unpublished(self, after: int, upto: Optional[int], limit: int) -> List[OutboxRow]:
        """Up to ``limit`` unpublished rows with ``after < rowid <= upto``, oldest first."""
        query = f"SELECT rowid, station, record_json {_UNPUBLISHED} AND rowid > ?"
        params: List[int] = [after]
        if upto is not None:
            query += " AND rowid <= ?"
            params.append(upto)
        with self._errors():
            rows = self._conn.execute(query + " ORDER BY rowid LIMIT ?", (*params, limit))
            return [OutboxRow(*row) for row in rows.fetchall()]

    def mark_published(self, rowids: Sequence[int]) -> None:
        """Set ``published_at`` (now, ISO 8601 UTC) on these rows, in one transaction."""
        now = iso_utc(datetime.now(timezone.utc))
        with self._transaction() as conn:
            conn.executemany(
                "UPDATE detections SET published_at = ? WHERE rowid = ?",
                [(now, rowid) for rowid in rowids],
            )

    def backlog(self) -> int:
        """How many rows wait to be published."""
        with self._errors():
            return int(self._conn.execute(f"SELECT COUNT(*) {_UNPUBLISHED}").fetchone()[0])

    def latest(self) -> Optional[Dict[str, Any]]:
        """The record of the detection that started last, published or not."""
        with self._errors():
            row = self._conn.execute(
                "SELECT record_json FROM detections ORDER BY start_epoch DESC LIMIT 1"
            ).fetchone()
        return json.loads(row["record_json"]) if row else None

    def count_between(self, start: datetime, end: datetime) -> int:
        """How many detections started in ``[start, end)``."""
        with self._errors():
            row = self._conn.execute(
                "SELECT COUNT(*) FROM detections WHERE start_epoch >= ? AND start_epoch < ?",
                (start.timestamp(), end.timestamp()),
            ).fetchone()
        return int(row[0])
