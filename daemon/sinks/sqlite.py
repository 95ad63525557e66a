"""The SQLite sink: the single writer of the detection database, the source of truth.

Transaction policy ("no partial rows"): detections are committed in batches as they arrive, so
a 10-hour run is never held in memory, while the run row says 'running' until ``close`` sets
its final status, end time and count. Readers treat only 'complete' runs as final. A run still
'running' when the next writer opens the database was left by a process that died; it is
marked 'interrupted'. The writer holds an exclusive lock on ``<db>.lock``, so a run that another
live process is still writing is never mistaken for a dead one.

Retention (``storage.retention_days``) runs when the sink opens and then at most hourly, after a
commit; with MQTT on it deletes only rows the outbox has already delivered.
"""

from __future__ import annotations

import fcntl
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any, Callable, List, Mapping, Optional, Sequence, Union

from birdd.daemon.records import Detection, Gap, RunInfo
from birdd.daemon.sinks.base import Sink
from birdd.daemon.store.sqlite_store import SQLiteStore, StoreError, lock_path

log = logging.getLogger(__name__)

RETENTION_EVERY_S = 3600.0


@dataclass(frozen=True)
class Retention:
    """Delete detections older than ``days``; ``keep_unpublished`` spares the MQTT outbox's."""

    days: float
    keep_unpublished: bool


class _WriterLock:
    """An exclusive ``flock`` on ``<db>.lock``, held by the one process that writes runs."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.path = lock_path(db_path)
        self._file: Optional[IO[str]] = None

    def acquire(self) -> None:
        try:
            lock_file = self.path.open("a")
        except OSError as exc:
            raise StoreError(f"cannot create {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            lock_file.close()
            raise StoreError(
                f"{self.db_path} is being written by another birdd process; "
                "stop it or choose another database path"
            ) from exc
        self._file = lock_file

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class SQLiteSink(Sink):
    """Writes a run and its detections to the database; the only writer of that database."""

    def __init__(
        self,
        path: Union[str, Path],
        busy_timeout_s: float = 5.0,
        on_commit: Optional[Callable[[], None]] = None,
        retention: Optional[Retention] = None,
    ) -> None:
        """``on_commit`` is called after each committed batch (the MQTT outbox's wake-up); it
        runs in the sink's thread and must return at once."""
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.on_commit = on_commit
        self.retention = retention
        self._lock = _WriterLock(self.path)
        self._store: Optional[SQLiteStore] = None
        self._run_id = ""
        self._purged_at = 0.0

    @property
    def name(self) -> str:
        return f"sqlite {self.path}"

    def open(self, run: RunInfo) -> None:
        store = SQLiteStore(self.path, self.busy_timeout_s)
        try:
            self._lock.acquire()
            _log_recovered(self.path, store.recover_interrupted())
            self._purge(store)
            store.begin_run(run)
        except BaseException:
            self._lock.release()
            store.close()
            raise
        self._store, self._run_id = store, run.run_id

    def write(self, detections: Sequence[Detection]) -> None:
        store = self._open_store()
        store.add_detections(self._run_id, detections)
        if self.on_commit is not None:
            self.on_commit()
        if time.monotonic() - self._purged_at >= RETENTION_EVERY_S:
            self._purge(store)

    def record_gap(self, gap: Gap) -> None:
        self._open_store().add_gap(self._run_id, gap)

    def write_file(self, file_row: Mapping[str, Any], detections: Sequence[Detection]) -> None:
        """One file of ``birdd analyze`` and its detections, committed together."""
        self._open_store().add_file(self._run_id, file_row, detections)
        if detections and self.on_commit is not None:
            self.on_commit()

    def close(self, status: str) -> None:
        store = self._open_store()
        try:
            store.end_run(self._run_id, status)
        finally:
            store.close()
            self._lock.release()
            self._store = None

    def _purge(self, store: SQLiteStore) -> None:
        self._purged_at = time.monotonic()
        if self.retention is None:
            return
        cutoff = datetime.now(timezone.utc) - timedelta(days=self.retention.days)
        deleted = store.purge(cutoff, self.retention.keep_unpublished)
        if deleted:
            log.info(
                "%s: deleted %d detection(s) older than %g days",
                self.path,
                deleted,
                self.retention.days,
            )

    def _open_store(self) -> SQLiteStore:
        if self._store is None:
            raise RuntimeError("SQLiteSink used before open() or after close()")
        return self._store


def _log_recovered(path: Path, run_ids: List[str]) -> None:
    if run_ids:
        log.warning(
            "%s: marked %d run(s) left 'running' by a process that stopped as 'interrupted': %s",
            path,
            len(run_ids),
            ", ".join(run_ids),
        )
