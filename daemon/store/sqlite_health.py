"""Damaged databases: found when a writer starts, moved aside and kept, checked and backed up.

Field stations lose SQLite files to power cuts on SD cards and to full or failing media. A
writer (``birdd run``, ``--simulate``, ``analyze``) calls ``recover_damaged`` before anything
opens the database: ``PRAGMA quick_check`` (read-only), and where SQLite finds damage the file
and its ``-wal``/``-shm`` are renamed to ``<name>.corrupt-<UTC>`` (never deleted or changed) and
a new database is started. ``birdd db check`` runs the full ``integrity_check``; ``birdd db
backup`` copies a live database with SQLite's online backup API.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

from birdd.daemon.store.sqlite_store import DatabasePathError, check_location, lock_path

log = logging.getLogger("birdd")

SQLITE_HEADER = b"SQLite format 3\x00"
DAMAGE_CODES = {11, 26}
"""SQLITE_CORRUPT and SQLITE_NOTADB (Python names them only from 3.11)."""
DAMAGE_WORDS = ("malformed", "not a database")
"""The same errors by their text, where Python (before 3.11) gives no error code."""
SIDECARS = ("-wal", "-shm", "-journal")
"""Files SQLite keeps beside a database; a damaged one's go with it (its -wal holds pages)."""
COPY_MARK = ".corrupt-"


def read_only(path: Path, busy_timeout_s: float = 5.0) -> sqlite3.Connection:
    """A connection that never writes the database (nor checkpoints its WAL when closed)."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=busy_timeout_s)


def integrity_findings(path: Path, pragma: str = "integrity_check") -> List[str]:
    """What ``PRAGMA integrity_check`` (or ``quick_check``) reports, read-only: ``[]`` when
    the database is sound, else one line per problem. Errors other than damage (a missing or
    unreadable file) raise ``sqlite3.Error``."""
    try:
        with closing(read_only(path)) as conn:
            rows = [str(row[0]) for row in conn.execute(f"PRAGMA {pragma}")]
    except sqlite3.DatabaseError as exc:
        if _damage_error(exc):
            return [str(exc)]
        raise
    return [] if rows == ["ok"] else rows


def _damage_error(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return any(words in str(exc) for words in DAMAGE_WORDS)
    return code & 0xFF in DAMAGE_CODES


@dataclass(frozen=True)
class Recovery:
    """A damaged database moved aside: where it is now and what SQLite said about it."""

    database: Path
    kept_as: Path
    problem: str


def recover_damaged(path: Path) -> Optional[Recovery]:
    """Check the database a writer is about to open; move a damaged one aside.

    Refuses (``DatabasePathError``, left unchanged) a file that is not a database and that
    birdd never used (no SQLite header, no ``<db>.lock``): a wrong ``--db``, not damage.
    Leaves the file alone while another process holds the writer lock (the writer reports
    that). Call it before this process opens any connection to ``path``.
    """
    check_location(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        findings = integrity_findings(path, "quick_check")
    except sqlite3.Error:
        return None  # not damage (unreadable, locked): opening it reports the reason
    if not findings:
        return None
    if not _birdd_database(path):
        raise DatabasePathError(
            f"{path} exists and is not an SQLite database (left unchanged); "
            "move it away or choose another database path"
        )
    return _move_aside(path, "; ".join(findings[:3]))


def _birdd_database(path: Path) -> bool:
    """An SQLite file (its header says so) or one birdd has written (its lock file is there).

    Read with ``open()``, which is safe only because no connection of this process is open.
    """
    with path.open("rb") as file:
        header = file.read(len(SQLITE_HEADER))
    return header == SQLITE_HEADER or lock_path(path).exists()


def _move_aside(path: Path, problem: str) -> Optional[Recovery]:
    with lock_path(path).open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return None  # another birdd writes it: its sink refuses this run
        kept = _copy_name(path)
        # The -wal first: left beside a new database, SQLite would replay its frames into it.
        moved = [suffix for suffix in SIDECARS if path.with_name(path.name + suffix).exists()]
        for suffix in moved:
            os.rename(path.with_name(path.name + suffix), kept.with_name(kept.name + suffix))
        os.rename(path, kept)
    log.warning(
        "damaged database %s (%s): moved aside to %s%s, kept unchanged; a new database "
        "starts in its place",
        path,
        problem,
        kept,
        f" with its {', '.join(moved)}" if moved else "",
    )
    return Recovery(path, kept, problem)


def _copy_name(path: Path) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    kept, number = path.with_name(f"{path.name}{COPY_MARK}{stamp}"), 1
    while kept.exists():
        number += 1
        kept = path.with_name(f"{path.name}{COPY_MARK}{stamp}-{number}")
    return kept


def damaged_copies(path: Path) -> List[Path]:
    """The damaged databases moved aside from ``path`` and still kept beside it, oldest first
    (their -wal/-shm not counted)."""
    pattern = f"{path.name}{COPY_MARK}*"
    copies = [p for p in path.parent.glob(pattern) if not p.name.endswith(SIDECARS)]
    return sorted(copies, key=lambda p: p.name)
