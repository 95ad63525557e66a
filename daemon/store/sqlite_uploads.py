"""The clip uploader's view of the detection database: the clips still to send, oldest first,
and their marks.

A clip waits while its row has ``clip_path`` and neither ``clip_uploaded_at`` nor
``clip_upload_error`` (the partial index ``detections_clips_unsent`` keeps the scan and the
count cheap however many rows are done). The uploader opens its own connection and is the only
code that sets those two columns; the housekeeping, deleting a clip for the disk's sake, sets
``clip_path`` NULL, which takes it out of the queue.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import List, NamedTuple, Sequence

from birdd.daemon.records import iso_utc
from birdd.daemon.store.sqlite_store import SQLiteStore

UNSENT = (
    "FROM detections WHERE clip_path IS NOT NULL AND clip_uploaded_at IS NULL "
    "AND clip_upload_error IS NULL"
)


class UnsentClip(NamedTuple):
    rowid: int
    detection_id: str
    station: str
    path: str
    sha256: str


class UploadStore(SQLiteStore):
    def unsent(self, after: int, limit: int) -> List[UnsentClip]:
        """Up to ``limit`` clips still to upload with ``rowid > after``, oldest first."""
        query = (
            f"SELECT rowid, id, station, clip_path, COALESCE(clip_sha256, '') {UNSENT} "
            "AND rowid > ? ORDER BY rowid LIMIT ?"
        )
        with self._errors():
            rows = self._conn.execute(query, (after, limit)).fetchall()
        return [UnsentClip(*row) for row in rows]

    def mark_uploaded(self, rowids: Sequence[int]) -> None:
        """The hub holds these clips (``clip_uploaded_at`` now)."""
        now = iso_utc(datetime.now(timezone.utc))
        with self._transaction() as conn:
            conn.executemany(
                "UPDATE detections SET clip_uploaded_at = ? WHERE rowid = ?",
                [(now, rowid) for rowid in rowids],
            )

    def mark_failed(self, rowid: int, reason: str) -> None:
        """Never to be sent: the hub refused this clip for good, or its file is gone."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE detections SET clip_upload_error = ? WHERE rowid = ?", (reason, rowid)
            )

    def backlog(self) -> int:
        """How many clips wait to be uploaded."""
        with self._errors():
            return int(self._conn.execute(f"SELECT COUNT(*) {UNSENT}").fetchone()[0])

    def unsent_ids(self) -> List[str]:
        """The detection ids of every clip still to upload (the disk budget deletes them
        last)."""
        with self._errors():
            return [str(row[0]) for row in self._conn.execute(f"SELECT id {UNSENT}")]
