"""``birdd db backup``: a consistent copy of a live database, written whole or not at all.

SQLite's online backup API copies every page inside one read transaction, so the copy is the
database as of one commit; in WAL mode the daemon keeps writing meanwhile (a reader never
blocks the writer). The copy goes to a temporary file beside the target, is switched to a
single-file journal mode, passes ``integrity_check``, is flushed to disk, and only then takes
the target's name: a power cut leaves either the old target or the new one, never half a copy.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from birdd.daemon.store.sqlite_health import integrity_findings, read_only


class BackupError(RuntimeError):
    """The copy could not be made or failed its check; one line, nothing left at the target."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    bytes: int
    detections: int
    seconds: float


def backup(source: Path, target: Path) -> BackupResult:
    """Copy ``source`` to ``target`` (replacing it) through a checked temporary file."""
    began = time.monotonic()
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        _copy(source, temporary)
        findings = integrity_findings(temporary)
        if findings:
            raise BackupError(
                f"the copy of {source} fails integrity_check ({findings[0]}); the database "
                f"itself may be damaged: run 'birdd db check --db {source}'"
            )
        detections = _count(temporary)
        _fsync(temporary)
        os.replace(temporary, target)
        _fsync(target.parent)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot copy {source} to {target}: {exc}") from exc
    finally:
        temporary.unlink(missing_ok=True)
    seconds = time.monotonic() - began
    return BackupResult(target, target.stat().st_size, detections, seconds)


def _copy(source: Path, temporary: Path) -> None:
    temporary.unlink(missing_ok=True)  # left by a process with this pid that was killed
    with closing(read_only(source)) as src, closing(sqlite3.connect(str(temporary))) as dst:
        src.backup(dst)  # all pages in one step: one read transaction, one snapshot
        # The pages say WAL; a backup is one self-contained file.
        dst.execute("PRAGMA journal_mode = DELETE")


def _count(path: Path) -> int:
    """The copy's detections (0 for a database no birdd run has written yet)."""
    with closing(read_only(path)) as conn:
        tables = conn.execute("SELECT name FROM sqlite_master WHERE name = 'detections'")
        if tables.fetchone() is None:
            return 0
        return int(conn.execute("SELECT COUNT(*) FROM detections").fetchone()[0])


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
