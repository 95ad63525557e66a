"""The embedded store: one SQLite file (WAL, so the web server reads while the ingest writes)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

from birdd.hub.store import writes
from birdd.hub.store.base import StoreError, StoreUnavailable
from birdd.hub.store.sql import SqlStore

BUSY_TIMEOUT_S = 5.0


class SqliteStore(SqlStore):
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser()
        super().__init__()

    def _connect(self) -> Any:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"{self.path.parent}: cannot create the hub's database folder ({exc.strerror}); "
                "give a writable --db PATH"
            ) from None
        try:
            conn = sqlite3.connect(
                str(self.path),
                timeout=BUSY_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise StoreError(
                f"{self.path}: cannot open it as the hub's SQLite database ({exc}); "
                "give a writable --db PATH"
            ) from None
        return conn

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[None]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def _insert_detections(self, conn: Any, params: List[Tuple]) -> List[bool]:
        # the batch's ids already stored, in one query, then the others in one executemany (a
        # C loop): faster than an INSERT … RETURNING per row. The write transaction (BEGIN
        # IMMEDIATE) keeps other writers out in between.
        ids = [row[0] for row in params]
        stored = {row[0] for row in conn.execute(writes.STORED_IDS, (json.dumps(ids),))}
        flags = writes.went_in(ids, set(ids) - stored)
        conn.executemany(writes.INSERT_DETECTION, [r for r, new in zip(params, flags) if new])
        return flags

    def _translate(self, exc: Exception) -> Optional[Exception]:
        if isinstance(exc, sqlite3.OperationalError):
            text = str(exc)
            if "locked" in text or "busy" in text or "disk I/O" in text or "full" in text:
                return StoreUnavailable(f"{self.path}: {text}; retrying")
            if "readonly" in text:
                return StoreError(f"{self.path}: {text}; give a writable --db PATH")
            return StoreError(f"{self.path}: {text}")
        if isinstance(exc, sqlite3.Error):
            return StoreError(f"{self.path}: {exc}")
        return None
