"""The SQLite sink: the single writer of the detection database, the source of truth.

Transaction policy ("no partial rows"): detections are committed in batches as they arrive, so
a 10-hour run is never held in memory, while the run row says 'running' until ``close`` sets
its final status, end time and count. Readers treat only 'complete' runs as final. A run still
'running' when the next writer opens the database was left by a process that died; it is
marked 'interrupted'. The writer holds an exclusive lock on ``<db>.lock``, so a run that another
live process is still writing is never mistaken for a dead one.
"""

from __future__ import annotations

import fcntl
import logging
from pathlib import Path
from typing import IO, List, Optional, Sequence, Union

from birdd.daemon.records import Detection

from .base import RunInfo, Sink
from .sqlite_store import SQLiteStore, StoreError

__all__ = ["SQLiteSink", "SQLiteStore", "StoreError"]

log = logging.getLogger(__name__)


class _WriterLock:
    """An exclusive ``flock`` on ``<db>.lock``, held by the one process that writes runs."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.path = db_path.with_name(db_path.name + ".lock")
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

    def __init__(self, path: Union[str, Path], busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self._lock = _WriterLock(self.path)
        self._store: Optional[SQLiteStore] = None
        self._run_id = ""

    @property
    def name(self) -> str:
        return f"sqlite {self.path}"

    def open(self, run: RunInfo) -> None:
        store = SQLiteStore(self.path, self.busy_timeout_s)
        try:
            self._lock.acquire()
            _log_recovered(self.path, store.recover_interrupted())
            store.begin_run(run)
        except BaseException:
            self._lock.release()
            store.close()
            raise
        self._store, self._run_id = store, run.run_id

    def write(self, detections: Sequence[Detection]) -> None:
        self._open_store().add_detections(self._run_id, detections)

    def close(self, status: str) -> None:
        store = self._open_store()
        try:
            store.end_run(self._run_id, status)
        finally:
            store.close()
            self._lock.release()
            self._store = None

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
