"""The hub's schema as numbered migrations, the same for SQLite and PostgreSQL.

Each migration runs once, in its own transaction, and is recorded in ``schema_migrations``. The
DDL is written once; ``{id}`` and ``{bytes}`` are the only words that differ between the two
databases (an auto-numbered key, a byte string) and are filled from ``TYPES``. Never edit a
released migration: add the next one.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

from birdd.hub.store import rollup

TYPES: Dict[str, Dict[str, str]] = {
    "sqlite": {"id": "INTEGER PRIMARY KEY", "bytes": "BLOB"},
    "postgres": {"id": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "bytes": "BYTEA"},
}

BOOKKEEPING = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_ms BIGINT NOT NULL
)"""

MIGRATIONS: List[Tuple[int, str, List[str]]] = [
    (
        1,
        "stations, detections, status and stats history, rejected messages",
        [
            """CREATE TABLE stations (
                id TEXT PRIMARY KEY,
                first_seen_ms BIGINT NOT NULL,
                last_seen_ms BIGINT NOT NULL,
                status TEXT,
                status_ms BIGINT,
                lat DOUBLE PRECISION,
                lon DOUBLE PRECISION,
                stats TEXT,
                stats_ms BIGINT,
                last_detection_ms BIGINT
            )""",
            """CREATE TABLE detections (
                id TEXT PRIMARY KEY,
                station TEXT NOT NULL,
                start_ms BIGINT NOT NULL,
                end_ms BIGINT NOT NULL,
                scientific TEXT NOT NULL,
                common TEXT NOT NULL,
                code TEXT,
                is_bird BOOLEAN NOT NULL,
                confidence DOUBLE PRECISION NOT NULL,
                source TEXT NOT NULL,
                channel TEXT NOT NULL,
                lat DOUBLE PRECISION,
                lon DOUBLE PRECISION,
                received_ms BIGINT NOT NULL,
                resends INTEGER NOT NULL DEFAULT 0,
                payload TEXT NOT NULL
            )""",
            "CREATE INDEX detections_time ON detections (start_ms, id)",
            "CREATE INDEX detections_station_time ON detections (station, start_ms, id)",
            "CREATE INDEX detections_species_time ON detections (scientific, start_ms, id)",
            """CREATE TABLE station_status (
                id {id},
                station TEXT NOT NULL,
                status TEXT NOT NULL,
                retained BOOLEAN NOT NULL,
                received_ms BIGINT NOT NULL
            )""",
            "CREATE INDEX station_status_time ON station_status (station, received_ms)",
            """CREATE TABLE station_stats (
                id {id},
                station TEXT NOT NULL,
                received_ms BIGINT NOT NULL,
                stats TEXT NOT NULL
            )""",
            "CREATE INDEX station_stats_time ON station_stats (station, received_ms)",
            """CREATE TABLE rejected (
                id {id},
                topic TEXT NOT NULL,
                reason TEXT NOT NULL,
                size INTEGER NOT NULL,
                payload {bytes} NOT NULL,
                received_ms BIGINT NOT NULL
            )""",
        ],
    ),
    (
        2,
        "detection_hours: detections per station, species and hour, backfilled",
        rollup.MIGRATION,
    ),
    (
        3,
        "clips: the audio stations upload, one per detection id (files under clips.dir)",
        [
            """CREATE TABLE clips (
                detection_id TEXT PRIMARY KEY,
                station TEXT NOT NULL,
                sha256 TEXT NOT NULL,
                size BIGINT NOT NULL,
                duration_s DOUBLE PRECISION NOT NULL,
                sample_rate INTEGER NOT NULL,
                received_ms BIGINT NOT NULL
            )""",
            "CREATE INDEX clips_sha256 ON clips (sha256)",
        ],
    ),
]

LATEST = MIGRATIONS[-1][0]


def statements(dialect: str, ddl: List[str]) -> List[str]:
    """The DDL of one migration for ``dialect`` (``sqlite`` or ``postgres``)."""
    return [statement.format(**TYPES[dialect]) for statement in ddl]
