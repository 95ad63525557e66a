"""Housekeeping on the detection database through a connection of its own, beside the sink's:
the clips budget's row updates, the WAL checkpoint and vacuuming.

Each statement is short and waits for the sink through SQLite's busy timeout; the one long one,
a full ``VACUUM`` (which holds every writer for as long as it copies the file), runs only when
the pipeline has stopped (``allow_full_vacuum``). A database made by this birdd is in
``auto_vacuum = INCREMENTAL`` mode (``sqlite_store._connect``), so freed pages are returned to
the disk in small steps while it runs; an older one is converted by its first full VACUUM.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set

from birdd.daemon.store.sqlite_uploads import UNSENT

CHUNK = 500
"""Detection ids per ``IN (…)`` query (SQLite allows 999 parameters in old builds)."""
INCREMENTAL = 2
VACUUM_STEP_PAGES = 1024
"""Pages freed per ``incremental_vacuum`` transaction (4 MiB of 4 KiB pages): short holds."""


def connect(path: Path, busy_timeout_s: float = 10.0) -> sqlite3.Connection:
    """A connection for housekeeping (autocommit; waits up to ``busy_timeout_s`` for locks)."""
    conn = sqlite3.connect(
        str(path), timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
    return conn


def clip_confidences(conn: sqlite3.Connection, detection_ids: Sequence[str]) -> Dict[str, float]:
    """The confidence of each of these detections that still has a row."""
    found: Dict[str, float] = {}
    for chunk in _chunks(detection_ids):
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(f"SELECT id, confidence FROM detections WHERE id IN ({marks})", chunk)
        found.update((str(row[0]), float(row[1])) for row in rows)
    return found


def unsent_clips(conn: sqlite3.Connection) -> Set[str]:
    """The detection ids whose clips wait to be uploaded (``sqlite_uploads``)."""
    return {str(row[0]) for row in conn.execute(f"SELECT id {UNSENT}")}


def forget_clips(conn: sqlite3.Connection, detection_ids: Sequence[str]) -> int:
    """Set ``clip_path`` to NULL on these detections' rows (their clips are being deleted;
    ``clip_duration_s`` stays, the mark that a clip was kept once); return how many changed."""
    changed = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        for chunk in _chunks(detection_ids):
            marks = ",".join("?" * len(chunk))
            changed += conn.execute(
                f"UPDATE detections SET clip_path = NULL WHERE id IN ({marks}) "
                "AND clip_path IS NOT NULL",
                chunk,
            ).rowcount
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return changed


def checkpoint(conn: sqlite3.Connection) -> bool:
    """``wal_checkpoint(TRUNCATE)``: copy the WAL into the database and empty the file. False
    when a reader or writer kept it from finishing (tried again next time)."""
    busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    return busy == 0


def free_fraction(conn: sqlite3.Connection) -> float:
    """The share of the database's pages that are free (the freelist)."""
    pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    return _freelist(conn) / pages if pages else 0.0


def vacuum(
    conn: sqlite3.Connection, min_free_fraction: float, allow_full_vacuum: bool
) -> Optional[str]:
    """Give free pages back to the disk: step by step in incremental mode; else, when the
    pipeline has stopped and ``min_free_fraction`` of the file is free, one full VACUUM that
    also turns incremental mode on. Returns what was done, or None."""
    if int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == INCREMENTAL:
        steps, free = 0, _freelist(conn)
        while free > 0:
            conn.execute(f"PRAGMA incremental_vacuum({VACUUM_STEP_PAGES})").fetchall()
            steps, before, free = steps + 1, free, _freelist(conn)
            if free >= before:
                break  # nothing more it can give back now
        return f"incremental vacuum ({steps} step(s))" if steps else None
    if not allow_full_vacuum or free_fraction(conn) < min_free_fraction:
        return None
    conn.execute(f"PRAGMA auto_vacuum = {INCREMENTAL}")
    conn.execute("VACUUM")
    return "full VACUUM (incremental vacuum from now on)"


def _freelist(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA freelist_count").fetchone()[0])


def _chunks(items: Sequence[str]) -> List[List[str]]:
    return [list(items[i : i + CHUNK]) for i in range(0, len(items), CHUNK)]
