"""The detection database's schema as an ordered list of migrations.

``MIGRATIONS[i]`` upgrades schema version ``i`` to ``i + 1`` (kept in ``PRAGMA user_version``).
``SQLiteStore`` applies the missing ones in one transaction when it opens a database. Once a
version has shipped, its migration is never edited: a change is a new function appended here.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from typing import Callable, Dict, List, Sequence

from birdd.daemon.records import Detection, Gap, RunInfo, iso_utc

_V1_INITIAL = (
    """
    CREATE TABLE runs (
        run_id        TEXT PRIMARY KEY,
        station       TEXT NOT NULL,
        mode          TEXT NOT NULL CHECK (mode IN ('simulate', 'live')),
        source        TEXT NOT NULL,
        started_at    TEXT NOT NULL,
        ended_at      TEXT,
        status        TEXT NOT NULL DEFAULT 'running'
                      CHECK (status IN ('running', 'complete', 'interrupted', 'failed')),
        clock_origin  TEXT NOT NULL,
        model_name    TEXT,
        model_version TEXT,
        model_sha256  TEXT,
        config_json   TEXT NOT NULL,
        detections    INTEGER NOT NULL DEFAULT 0
    )
    """,
    # rowid orders the MQTT outbox; id is the stable detection id every sink and re-send carries.
    # Times are stored twice: ISO 8601 UTC text for people, epoch seconds for range queries.
    """
    CREATE TABLE detections (
        rowid         INTEGER PRIMARY KEY,
        id            TEXT UNIQUE NOT NULL,
        run_id        TEXT NOT NULL REFERENCES runs (run_id),
        station       TEXT NOT NULL,
        source        TEXT NOT NULL,
        channel       TEXT NOT NULL,
        start_utc     TEXT NOT NULL,
        start_epoch   REAL NOT NULL,
        end_utc       TEXT NOT NULL,
        end_epoch     REAL NOT NULL,
        offset_start  REAL NOT NULL,
        offset_end    REAL NOT NULL,
        scientific    TEXT NOT NULL,
        common        TEXT NOT NULL,
        code          TEXT,
        is_bird       INTEGER NOT NULL,
        confidence    REAL NOT NULL,
        windows       INTEGER NOT NULL,
        model_name    TEXT,
        model_version TEXT,
        model_sha256  TEXT,
        record_json   TEXT NOT NULL,
        -- Set (ISO 8601 UTC) by the MQTT outbox once the broker has acknowledged the record;
        -- NULL means not yet published.
        published_at  TEXT
    )
    """,
    "CREATE INDEX detections_start ON detections (start_epoch)",
    "CREATE INDEX detections_species_start ON detections (scientific, start_epoch)",
    "CREATE INDEX detections_run ON detections (run_id)",
    # The outbox scans unpublished rows in rowid order; published rows drop out of the index.
    "CREATE INDEX detections_unpublished ON detections (rowid) WHERE published_at IS NULL",
)


def _v1_initial(conn: sqlite3.Connection) -> None:
    for statement in _V1_INITIAL:
        conn.execute(statement)


def _v2_gaps(conn: sqlite3.Connection) -> None:
    """Source outages of live runs (a microphone unplugged, a stream that stalled)."""
    conn.execute(
        """
        CREATE TABLE gaps (
            rowid       INTEGER PRIMARY KEY,
            run_id      TEXT NOT NULL REFERENCES runs (run_id),
            source      TEXT NOT NULL,
            start_utc   TEXT NOT NULL,
            start_epoch REAL NOT NULL,
            end_utc     TEXT NOT NULL,
            end_epoch   REAL NOT NULL,
            seconds     REAL NOT NULL,
            reason      TEXT NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX gaps_start ON gaps (start_epoch)")


def _v3_analyzed_files(conn: sqlite3.Connection) -> None:
    """``birdd analyze``: runs of mode 'analyze', and one row per file each analyse job
    finished or failed, keyed for resuming (path, size, mtime, model, settings).

    The runs table's CHECK on ``mode`` gains 'analyze' by rewriting its declaration in place
    (SQLite's documented procedure for constraint changes that leave every stored row valid);
    rebuilding the table would trip the detections' and gaps' foreign keys on it."""
    version = int(conn.execute("PRAGMA schema_version").fetchone()[0])
    declared = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'runs'"
    ).fetchone()[0]
    old, new = "mode IN ('simulate', 'live')", "mode IN ('simulate', 'live', 'analyze')"
    if old not in declared:
        raise sqlite3.DatabaseError(f"runs table declared unexpectedly: {declared}")
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute(
        "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'runs'",
        (declared.replace(old, new),),
    )
    conn.execute(f"PRAGMA schema_version = {version + 1}")
    conn.execute("PRAGMA writable_schema = OFF")
    conn.execute(
        """
        CREATE TABLE analyzed_files (
            rowid           INTEGER PRIMARY KEY,
            run_id          TEXT NOT NULL REFERENCES runs (run_id),
            path            TEXT NOT NULL,
            size            INTEGER NOT NULL,
            mtime_ns        INTEGER NOT NULL,
            model_sha256    TEXT NOT NULL,
            settings_sha256 TEXT NOT NULL,
            status          TEXT NOT NULL CHECK (status IN ('done', 'failed')),
            reason          TEXT,
            clock_origin    TEXT,
            audio_seconds   REAL NOT NULL DEFAULT 0,
            windows         INTEGER NOT NULL DEFAULT 0,
            detections      INTEGER NOT NULL DEFAULT 0,
            finished_at     TEXT NOT NULL
        )
        """
    )
    conn.execute(
        "CREATE INDEX analyzed_files_key ON analyzed_files "
        "(path, size, mtime_ns, model_sha256, settings_sha256)"
    )


def _v4_clips(conn: sqlite3.Connection) -> None:
    """Detection clips (``clips``): the saved file and its length, NULL where no clip was
    kept (clips off, speech heard, a backlog) and in every row written before."""
    conn.execute("ALTER TABLE detections ADD COLUMN clip_path TEXT")
    conn.execute("ALTER TABLE detections ADD COLUMN clip_duration_s REAL")


def _v5_clip_uploads(conn: sqlite3.Connection) -> None:
    """The clips' upload outbox (``clips.upload``), kept like MQTT's in the detection rows: a
    clip is waiting while ``clip_path`` is set and neither ``clip_uploaded_at`` (ISO 8601 UTC,
    the hub stored it) nor ``clip_upload_error`` (the hub refused it for good) is; the
    partial index keeps the scan cheap. ``clip_sha256`` is taken from the record where a
    clip was kept before."""
    conn.execute("ALTER TABLE detections ADD COLUMN clip_sha256 TEXT")
    conn.execute("ALTER TABLE detections ADD COLUMN clip_uploaded_at TEXT")
    conn.execute("ALTER TABLE detections ADD COLUMN clip_upload_error TEXT")
    conn.execute(
        "UPDATE detections SET clip_sha256 = json_extract(record_json, '$.clip.sha256') "
        "WHERE clip_duration_s IS NOT NULL"
    )
    conn.execute(
        "CREATE INDEX detections_clips_unsent ON detections (rowid) WHERE clip_path IS NOT "
        "NULL AND clip_uploaded_at IS NULL AND clip_upload_error IS NULL"
    )


MIGRATIONS: List[Callable[[sqlite3.Connection], None]] = [
    _v1_initial,
    _v2_gaps,
    _v3_analyzed_files,
    _v4_clips,
    _v5_clip_uploads,
]


RUN_COLUMNS = (
    "run_id",
    "station",
    "mode",
    "source",
    "started_at",
    "clock_origin",
    "model_name",
    "model_version",
    "model_sha256",
    "config_json",
)
DETECTION_COLUMNS = (
    "id",
    "run_id",
    "station",
    "source",
    "channel",
    "start_utc",
    "start_epoch",
    "end_utc",
    "end_epoch",
    "offset_start",
    "offset_end",
    "scientific",
    "common",
    "code",
    "is_bird",
    "confidence",
    "windows",
    "model_name",
    "model_version",
    "model_sha256",
    "record_json",
    "clip_path",
    "clip_duration_s",
    "clip_sha256",
)


GAP_COLUMNS = (
    "run_id",
    "source",
    "start_utc",
    "start_epoch",
    "end_utc",
    "end_epoch",
    "seconds",
    "reason",
)


FILE_COLUMNS = (
    "run_id",
    "path",
    "size",
    "mtime_ns",
    "model_sha256",
    "settings_sha256",
    "status",
    "reason",
    "clock_origin",
    "audio_seconds",
    "windows",
    "detections",
    "finished_at",
)
FILE_KEY_COLUMNS = ("path", "size", "mtime_ns", "model_sha256", "settings_sha256")


def insert_statement(table: str, columns: Sequence[str]) -> str:
    """``INSERT`` with named placeholders, for rows built by ``run_row`` / ``detection_row``."""
    placeholders = ", ".join(f":{column}" for column in columns)
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})"


def run_row(run: RunInfo) -> Dict[str, object]:
    return {
        "run_id": run.run_id,
        "station": run.station,
        "mode": run.mode,
        "source": run.source,
        "started_at": iso_utc(run.started_at),
        "clock_origin": run.clock_origin,
        "model_name": run.model.get("name"),
        "model_version": run.model.get("version"),
        "model_sha256": run.model.get("sha256"),
        "config_json": run.config_json,
    }


def detection_row(run_id: str, detection: Detection) -> Dict[str, object]:
    """The column values, taken from the record where both exist so that SQL and JSON agree."""
    record = detection.to_record()
    species = detection.species
    return {
        "id": detection.id,
        "run_id": run_id,
        "station": detection.station,
        "source": detection.source,
        "channel": str(detection.channel),
        "start_utc": record["start"],
        "start_epoch": detection.start.timestamp(),
        "end_utc": record["end"],
        "end_epoch": detection.end.timestamp(),
        "offset_start": record["offset_start"],
        "offset_end": record["offset_end"],
        "scientific": species.scientific,
        "common": species.common,
        "code": species.code,
        "is_bird": int(species.is_bird),
        "confidence": record["confidence"],
        "windows": detection.windows,
        "model_name": detection.model.get("name"),
        "model_version": detection.model.get("version"),
        "model_sha256": detection.model.get("sha256"),
        "record_json": json.dumps(record),
        "clip_path": detection.clip.path if detection.clip else None,
        "clip_duration_s": detection.clip.duration_s if detection.clip else None,
        "clip_sha256": detection.clip.sha256 if detection.clip else None,
    }


def gap_row(run_id: str, gap: Gap) -> Dict[str, object]:
    return {
        "run_id": run_id,
        "source": gap.source,
        "start_utc": iso_utc(datetime.fromtimestamp(gap.start, timezone.utc)),
        "start_epoch": gap.start,
        "end_utc": iso_utc(datetime.fromtimestamp(gap.end, timezone.utc)),
        "end_epoch": gap.end,
        "seconds": round(gap.seconds, 3),
        "reason": gap.reason,
    }
