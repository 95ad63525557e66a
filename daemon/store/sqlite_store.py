"""The detection database without threads: open, migrate, write runs and detections, query.

The sink (``sqlite.SQLiteSink``) writes through this class; readers such as tests, the MQTT
outbox and ``birdd db`` commands use it directly. Every failure is a one-line ``StoreError``.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union

from birdd.daemon.records import Detection, Gap, RunInfo, check_end_status, iso_utc
from birdd.daemon.store.sqlite_schema import (
    DETECTION_COLUMNS,
    FILE_COLUMNS,
    FILE_KEY_COLUMNS,
    GAP_COLUMNS,
    MIGRATIONS,
    RUN_COLUMNS,
    detection_row,
    gap_row,
    insert_statement,
    run_row,
)

_COUNT = "SELECT COUNT(*) FROM detections WHERE detections.run_id = runs.run_id"


class StoreError(RuntimeError):
    """The database cannot be opened, migrated or written; one line naming the path and the fix."""


class DatabasePathError(StoreError):
    """The path given for the database cannot be one (a directory, a file that is not SQLite,
    a parent that is a file): bad input, which restarting will not mend."""


class SQLiteStore:
    """The detection database without threads: the sink writes through it, readers query it."""

    def __init__(self, path: Union[str, Path], busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        check_path(self.path)
        self._conn = _connect(self.path, busy_timeout_s)
        try:
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    @property
    def schema_version(self) -> int:
        with self._errors():
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def begin_run(self, run: RunInfo) -> None:
        """Record a new run; its status stays 'running' until ``end_run``."""
        with self._transaction() as conn:
            conn.execute(insert_statement("runs", RUN_COLUMNS), run_row(run))

    def add_detections(self, run_id: str, detections: Sequence[Detection]) -> None:
        """Commit one batch of a run's detections; a duplicate id rolls the whole batch back."""
        rows = [detection_row(run_id, detection) for detection in detections]
        with self._transaction() as conn:
            conn.executemany(insert_statement("detections", DETECTION_COLUMNS), rows)

    def add_gap(self, run_id: str, gap: Gap) -> None:
        with self._transaction() as conn:
            conn.execute(insert_statement("gaps", GAP_COLUMNS), gap_row(run_id, gap))

    def add_file(
        self, run_id: str, file_row: Mapping[str, Any], detections: Sequence[Detection] = ()
    ) -> None:
        """Commit one analysed (or failed) file and its detections in one transaction, so a
        file is in the store whole or not at all. A file analysed again under the same key
        (``--force``) replaces the earlier analysis: its row and its detections go."""
        rows = [detection_row(run_id, detection) for detection in detections]
        key = {column: file_row[column] for column in FILE_KEY_COLUMNS}
        same_key = " AND ".join(f"{column} = :{column}" for column in FILE_KEY_COLUMNS)
        with self._transaction() as conn:
            if file_row["status"] == "done":
                conn.execute(
                    "DELETE FROM detections WHERE source = :path AND run_id IN "
                    f"(SELECT run_id FROM analyzed_files WHERE status = 'done' AND {same_key})",
                    key,
                )
                conn.execute(
                    f"DELETE FROM analyzed_files WHERE status = 'done' AND {same_key}", key
                )
            conn.executemany(insert_statement("detections", DETECTION_COLUMNS), rows)
            conn.execute(
                insert_statement("analyzed_files", FILE_COLUMNS), {"run_id": run_id, **file_row}
            )

    def analyzed(self, model_sha256: str, settings_sha256: str) -> Set[Tuple[str, int, int]]:
        """(path, size, mtime_ns) of every file analysed to the end with this model and these
        settings: what a resumed ``birdd analyze`` skips."""
        with self._errors():
            rows = self._conn.execute(
                "SELECT path, size, mtime_ns FROM analyzed_files WHERE status = 'done' "
                "AND model_sha256 = ? AND settings_sha256 = ?",
                (model_sha256, settings_sha256),
            ).fetchall()
        return {(row["path"], row["size"], row["mtime_ns"]) for row in rows}

    def files(self, run_id: Optional[str] = None) -> List[Dict[str, Any]]:
        """The analyse jobs' file rows (of one run, or all), in the order they were stored."""
        query = "SELECT * FROM analyzed_files"
        params: Tuple[str, ...] = ()
        if run_id is not None:
            query, params = query + " WHERE run_id = ?", (run_id,)
        with self._errors():
            rows = self._conn.execute(query + " ORDER BY rowid", params).fetchall()
        return [dict(row) for row in rows]

    def gaps(self) -> List[Dict[str, Any]]:
        """Every recorded source outage as a dict, oldest first."""
        with self._errors():
            rows = self._conn.execute("SELECT * FROM gaps ORDER BY rowid").fetchall()
        return [dict(row) for row in rows]

    def end_run(self, run_id: str, status: str) -> None:
        """Set a run's final status, end time and detection count."""
        check_end_status(status)
        with self._transaction() as conn:
            updated = conn.execute(
                f"UPDATE runs SET status = ?, ended_at = ?, detections = ({_COUNT})"
                " WHERE run_id = ?",
                (status, iso_utc(datetime.now(timezone.utc)), run_id),
            ).rowcount
        if updated == 0:
            raise StoreError(f"{self.path}: no run {run_id!r} to close")

    def recover_interrupted(self) -> List[str]:
        """Mark runs left 'running' as 'interrupted' and return their ids.

        Call only while holding the writer lock: otherwise a run still being written by
        another process would be marked too.
        """
        with self._transaction() as conn:
            rows = conn.execute("SELECT run_id FROM runs WHERE status = 'running'").fetchall()
            conn.execute(
                f"UPDATE runs SET status = 'interrupted', detections = ({_COUNT})"
                " WHERE status = 'running'"
            )
        return [row["run_id"] for row in rows]

    def purge(self, older_than: datetime, only_published: bool) -> int:
        """Delete detections that started before ``older_than``; return how many.

        With ``only_published`` a row the MQTT outbox has not delivered yet is kept whatever
        its age. The newest row is always kept, so that rowids are never reused (the outbox
        finds new rows by rowid).
        """
        condition = "start_epoch < ? AND rowid < (SELECT MAX(rowid) FROM detections)"
        if only_published:
            condition += " AND published_at IS NOT NULL"
        with self._transaction() as conn:
            cursor = conn.execute(
                f"DELETE FROM detections WHERE {condition}", (older_than.timestamp(),)
            )
        return cursor.rowcount

    def detections(self, run_id: Optional[str] = None) -> List[Dict[str, Any]]:
        """Detection records (``Detection.to_record()``), in the order they were stored."""
        query = "SELECT record_json FROM detections"
        params: Tuple[str, ...] = ()
        if run_id is not None:
            query, params = query + " WHERE run_id = ?", (run_id,)
        with self._errors():
            rows = self._conn.execute(query + " ORDER BY rowid", params).fetchall()
        return [json.loads(row["record_json"]) for row in rows]

    def runs(self) -> List[Dict[str, Any]]:
        """Every run row as a dict, oldest first."""
        with self._errors():
            rows = self._conn.execute("SELECT * FROM runs ORDER BY rowid").fetchall()
        return [dict(row) for row in rows]

    def _migrate(self) -> None:
        with self._transaction() as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"{self.path} has schema version {version}, newer than this birdd knows "
                    f"({len(MIGRATIONS)}); upgrade birdd or use another database"
                )
            for migration in MIGRATIONS[version:]:
                migration(conn)
            conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise _store_error(self.path, exc) from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` … ``COMMIT``; rolled back on any exception."""
        with self._errors():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")


def check_path(path: Path) -> None:
    """Refuse a directory or a non-SQLite file before SQLite writes anything."""
    check_location(path)
    if _is_foreign_file(path):
        raise DatabasePathError(
            f"{path} exists and is not an SQLite database (left unchanged); "
            "move it away or choose another database path"
        )


def lock_path(path: Path) -> Path:
    """``<db>.lock``: held by the one process writing runs; its presence shows birdd wrote
    this database."""
    return path.with_name(path.name + ".lock")


def check_location(path: Path) -> None:
    """Refuse a directory, or a path whose folder cannot be made, as the database."""
    if path.is_dir():
        raise DatabasePathError(
            f"{path} is a directory; give a database file such as {path / 'birdd.db'}"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = "a parent is a file" if isinstance(exc, FileExistsError) else exc.strerror
        raise DatabasePathError(
            f"cannot use {path}: {reason}; check the path and permissions"
        ) from exc


def _is_foreign_file(path: Path) -> bool:
    """True when ``path`` exists and is not an SQLite database.

    Read through a read-only SQLite connection, never with ``open()``: closing any descriptor
    of a database file drops every POSIX lock this process holds on it, and with another
    connection open in the process (the MQTT outbox's) another process could then delete the
    WAL file that this one is still appending to. SQLite's own file handling avoids that.
    """
    if not path.is_file():
        return False
    try:
        probe = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return False  # unreadable: _connect reports it
    try:
        probe.execute("PRAGMA schema_version")
    except sqlite3.DatabaseError as exc:
        return "not a database" in str(exc)
    finally:
        probe.close()
    return False


def _connect(path: Path, busy_timeout_s: float) -> sqlite3.Connection:
    # isolation_level=None: transactions are explicit (see SQLiteStore._transaction).
    # check_same_thread=False: the sink opens in the caller's thread and writes in its own.
    try:
        conn = sqlite3.connect(
            str(path), timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise _store_error(path, exc) from exc
    conn.row_factory = sqlite3.Row
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        # Takes effect only in a new database (and at a VACUUM): free pages can then be given
        # back in small steps (store/sqlite_maintenance.py).
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        journal = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as exc:
        conn.close()
        raise _store_error(path, exc) from exc
    if journal != "wal":
        conn.close()
        raise StoreError(f"{path}: SQLite refused WAL mode ({journal}); use a local disk")
    return conn


def _store_error(path: Path, exc: sqlite3.Error) -> StoreError:
    message = str(exc)
    if "not a database" in message:
        return DatabasePathError(
            f"{path} is not an SQLite database; move it away or choose another path"
        )
    if "readonly" in message or "unable to open" in message:
        return StoreError(f"cannot write {path} ({message}); check that its directory is writable")
    return StoreError(f"{path}: {message}")
