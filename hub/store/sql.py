"""The SQL both backends run: one ``SqlStore`` over a DB-API connection.

Every statement is a constant with ``?`` placeholders (PostgreSQL's backend turns them into
``%s``); values only ever travel as parameters. Optional filters are joined from the constant
fragments in ``_where``, never from the values.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from abc import abstractmethod
from typing import Any, Callable, List, Optional, Sequence, Tuple, TypeVar

from birdd.hub.store import rollup, schema, writes
from birdd.hub.store.base import (
    ActivityBucket,
    Batch,
    DetectionQuery,
    DetectionRow,
    NewDetection,
    RejectedRow,
    SpeciesCount,
    StationCount,
    StationRow,
    StatsReport,
    StatusEvent,
    Store,
)
from birdd.hub.store.clip_sql import ClipSql

T = TypeVar("T")

STATION_COLUMNS = """id, first_seen_ms, last_seen_ms, status, status_ms, lat, lon, stats,
    stats_ms, last_detection_ms"""
DETECTION_COLUMNS = """id, station, start_ms, end_ms, scientific, common, code, is_bird,
    confidence, source, channel, lat, lon, received_ms, resends, payload"""

FILTERS = {
    "station": "station = ?",
    "species": "scientific = ?",
    "since_ms": "start_ms >= ?",
    "until_ms": "start_ms < ?",
    "min_confidence": "confidence >= ?",
}


def _where(**values: Any) -> Tuple[str, List[Any]]:
    """``WHERE`` from the constant ``FILTERS`` of the values given (None: no filter)."""
    used = [(FILTERS[name], value) for name, value in values.items() if value is not None]
    if not used:
        return "", []
    return " WHERE " + " AND ".join(text for text, _ in used), [value for _, value in used]


def now_ms() -> int:
    return int(time.time() * 1000)


class SqlStore(ClipSql, Store):
    """The shared implementation; a backend gives the connection, its transactions and what
    its errors mean."""

    dialect = ""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: Any = self._connect()
        self._migrate()

    # -- backend hooks ----------------------------------------------------------------------

    @abstractmethod
    def _connect(self) -> Any:
        """A new DB-API connection; raises ``StoreError`` / ``StoreUnavailable``."""

    @abstractmethod
    def _transaction(self, write: bool) -> Any:
        """A context manager around one transaction on ``self._conn`` (commit or roll back)."""

    @abstractmethod
    def _translate(self, exc: Exception) -> Optional[Exception]:
        """The ``StoreError`` / ``StoreUnavailable`` for a driver exception, None if foreign."""

    def _sql(self, statement: str) -> str:
        return statement

    # -- plumbing ---------------------------------------------------------------------------

    def _run(self, write: bool, work: Callable[[Any], T]) -> T:
        with self._lock:
            try:
                with self._transaction(write):
                    return work(self._conn)
            except Exception as exc:
                translated = self._translate(exc)
                if translated is None:
                    raise
                raise translated from exc

    def _rows(self, conn: Any, statement: str, params: Sequence[Any] = ()) -> List[Tuple]:
        return list(conn.execute(self._sql(statement), tuple(params)).fetchall())

    def _execute(self, conn: Any, statement: str, params: Sequence[Any] = ()) -> None:
        if params:
            conn.execute(self._sql(statement), tuple(params))
        else:  # DDL: psycopg reads % as a placeholder only when parameters are given
            conn.execute(self._sql(statement))

    def _executemany(self, conn: Any, statement: str, params: List[Tuple]) -> None:
        if params:
            conn.cursor().executemany(self._sql(statement), params)

    @abstractmethod
    def _insert_detections(self, conn: Any, params: List[Tuple]) -> List[bool]:
        """Insert the rows of ``writes.detection_params`` but no id already stored: whether
        each went in. Of two copies of an id in one batch, the first."""

    def _add_hours(self, conn: Any, rows: List[Tuple]) -> None:
        """Add ``rollup.hour_rows`` to ``detection_hours`` (PostgreSQL: in one statement)."""
        self._executemany(conn, rollup.ADD, rows)

    def close(self) -> None:
        # a connection that already broke has nothing to close
        with self._lock, contextlib.suppress(Exception):
            self._conn.close()

    def reconnect(self) -> None:
        self.close()
        with self._lock:
            self._conn = self._connect()

    # -- schema -----------------------------------------------------------------------------

    def _migrate(self) -> None:
        def apply(conn: Any) -> None:
            self._lock_schema(conn)
            self._execute(conn, schema.BOOKKEEPING)
            done = self._rows(conn, "SELECT version FROM schema_migrations")
            applied = {int(row[0]) for row in done}
            for version, description, ddl in schema.MIGRATIONS:
                if version in applied:
                    continue
                for statement in schema.statements(self.dialect, ddl):
                    self._execute(conn, statement)
                self._execute(
                    conn,
                    "INSERT INTO schema_migrations (version, description, applied_ms) "
                    "VALUES (?, ?, ?)",
                    (version, description, now_ms()),
                )

        self._run(True, apply)

    def _lock_schema(self, conn: Any) -> None:
        """Keep two hubs starting together from migrating at once (PostgreSQL overrides)."""

    def schema_version(self) -> int:
        rows = self._run(
            False, lambda c: self._rows(c, "SELECT MAX(version) FROM schema_migrations")
        )
        return int(rows[0][0] or 0)

    # -- writes -----------------------------------------------------------------------------

    def write(self, batch: Batch) -> None:
        if len(batch):
            self._run(True, lambda conn: self._write(conn, batch))

    def _write(self, conn: Any, batch: Batch) -> None:
        self._write_detections(conn, batch.detections)
        self._executemany(conn, writes.TOUCH_STATION, writes.station_touches(batch))
        for status in batch.statuses:
            station, value = status.station, status.status
            self._execute(
                conn,
                writes.STATUS_CHANGE,
                (station, value, status.retained, status.received_ms, station, value),
            )
            self._execute(conn, writes.SET_STATUS, (value, status.received_ms, value, station))
        for stats in batch.stats:
            self._execute(
                conn, writes.INSERT_STATS, (stats.station, stats.received_ms, stats.stats)
            )
            self._execute(conn, writes.SET_STATS, (stats.stats, stats.received_ms, stats.station))
        self._executemany(
            conn,
            writes.INSERT_REJECTED,
            [(r.topic, r.reason, r.size, r.payload, r.received_ms) for r in batch.rejected],
        )

    def _write_detections(self, conn: Any, detections: List[NewDetection]) -> None:
        """Insert the new ones and count them in ``detection_hours``; a detection id already
        stored (earlier, or before in this batch) only grows its ``resends``."""
        if not detections:
            return
        went_in = self._insert_detections(conn, [writes.detection_params(d) for d in detections])
        inserted = [d for d, new in zip(detections, went_in) if new]
        resent = [(d.id,) for d, new in zip(detections, went_in) if not new]
        self._executemany(conn, writes.RESENT, resent)
        self._add_hours(conn, rollup.hour_rows(inserted))

    # -- reads ------------------------------------------------------------------------------

    def stations(self) -> List[StationRow]:
        statement = f"SELECT {STATION_COLUMNS} FROM stations ORDER BY id"
        return [_station(row) for row in self._run(False, lambda c: self._rows(c, statement))]

    def station(self, station: str) -> Optional[StationRow]:
        statement = f"SELECT {STATION_COLUMNS} FROM stations WHERE id = ?"
        rows = self._run(False, lambda c: self._rows(c, statement, (station,)))
        return _station(rows[0]) if rows else None

    def _detection_filter(self, query: DetectionQuery) -> Tuple[str, List[Any]]:
        return _where(
            station=query.station,
            species=query.species,
            since_ms=query.since_ms,
            until_ms=query.until_ms,
            min_confidence=query.min_confidence,
        )

    def detections(self, query: DetectionQuery) -> List[DetectionRow]:
        where, params = self._detection_filter(query)
        if query.before is not None:
            where += (" AND " if where else " WHERE ") + "(start_ms, id) < (?, ?)"
            params += list(query.before)
        statement = (
            f"SELECT {DETECTION_COLUMNS} FROM detections{where} "
            "ORDER BY start_ms DESC, id DESC LIMIT ?"
        )
        rows = self._run(False, lambda c: self._rows(c, statement, [*params, query.limit]))
        return [_detection(row) for row in rows]

    def count_detections(self, query: DetectionQuery) -> int:
        where, params = self._detection_filter(query)
        statement = f"SELECT COUNT(*) FROM detections{where}"
        return int(self._run(False, lambda c: self._rows(c, statement, params))[0][0])

    def species(
        self,
        station: Optional[str] = None,
        since_ms: Optional[int] = None,
        until_ms: Optional[int] = None,
    ) -> List[SpeciesCount]:
        parts, params = rollup.union(
            rollup.SPECIES_HOURS,
            rollup.SPECIES_RAW,
            rollup.split(since_ms, until_ms),
            station=station,
        )
        if not parts:
            return []
        statement = f"""SELECT scientific, MIN(common), MIN(code), SUM(n), MIN(first_ms),
            MAX(last_ms), COUNT(DISTINCT station), MAX(confidence) FROM ({parts}) AS parts
            GROUP BY scientific ORDER BY SUM(n) DESC, scientific"""
        rows = self._run(False, lambda c: self._rows(c, statement, params))
        return [
            SpeciesCount(r[0], r[1], r[2], int(r[3]), int(r[4]), int(r[5]), int(r[6]), float(r[7]))
            for r in rows
        ]

    def species_stations(
        self, scientific: str, since_ms: Optional[int] = None, until_ms: Optional[int] = None
    ) -> List[StationCount]:
        parts, params = rollup.union(
            rollup.SPECIES_HOURS,
            rollup.SPECIES_RAW,
            rollup.split(since_ms, until_ms),
            species=scientific,
        )
        if not parts:
            return []
        statement = f"""SELECT station, SUM(n), MIN(first_ms), MAX(last_ms), MAX(confidence)
            FROM ({parts}) AS parts GROUP BY station ORDER BY SUM(n) DESC, station"""
        rows = self._run(False, lambda c: self._rows(c, statement, params))
        return [StationCount(r[0], int(r[1]), int(r[2]), int(r[3]), float(r[4])) for r in rows]

    def activity(
        self,
        bucket_s: int,
        station: Optional[str] = None,
        species: Optional[str] = None,
        since_ms: Optional[int] = None,
        until_ms: Optional[int] = None,
        offset_s: int = 0,
    ) -> List[ActivityBucket]:
        if bucket_s <= 0:
            raise ValueError(f"bucket_s {bucket_s}: give a number of seconds above 0")
        width, offset = bucket_s * 1000, offset_s * 1000
        if rollup.hourly(width, offset, since_ms):
            part = rollup.split(since_ms, until_ms)
        else:  # buckets that cut hours, or times before 1970 (SQL's / rounds towards zero)
            part = rollup.Split(None, [(since_ms, until_ms)])
        parts, params = rollup.union(
            rollup.ACTIVITY_HOURS,
            rollup.ACTIVITY_RAW,
            part,
            station=station,
            species=species,
            select_params=(offset, width, width, offset),
        )
        if not parts:
            return []
        statement = f"""SELECT bucket, scientific, SUM(n) FROM ({parts}) AS parts
            GROUP BY bucket, scientific ORDER BY bucket, scientific"""
        rows = self._run(False, lambda c: self._rows(c, statement, params))
        return [ActivityBucket(int(r[0]), r[1], int(r[2])) for r in rows]

    def status_history(
        self, station: str, since_ms: Optional[int] = None, limit: int = 1000
    ) -> List[StatusEvent]:
        statement = (
            "SELECT station, status, retained, received_ms FROM station_status "
            "WHERE station = ? AND received_ms >= ? ORDER BY received_ms DESC, id DESC LIMIT ?"
        )
        params = (station, since_ms or 0, limit)
        rows = self._run(False, lambda c: self._rows(c, statement, params))
        return [StatusEvent(r[0], r[1], bool(r[2]), int(r[3])) for r in rows]

    def stats_history(
        self, station: str, since_ms: Optional[int] = None, limit: int = 1000
    ) -> List[StatsReport]:
        statement = (
            "SELECT station, received_ms, stats FROM station_stats "
            "WHERE station = ? AND received_ms >= ? ORDER BY received_ms DESC, id DESC LIMIT ?"
        )
        params = (station, since_ms or 0, limit)
        rows = self._run(False, lambda c: self._rows(c, statement, params))
        return [StatsReport(r[0], int(r[1]), json.loads(r[2])) for r in rows]

    def rejected(self, limit: int = 100, before_id: Optional[int] = None) -> List[RejectedRow]:
        statement = (
            "SELECT id, topic, reason, size, payload, received_ms FROM rejected "
            "WHERE id < ? ORDER BY id DESC LIMIT ?"
        )
        params = (before_id if before_id is not None else 2**62, limit)
        rows = self._run(False, lambda c: self._rows(c, statement, params))
        return [RejectedRow(int(r[0]), r[1], r[2], int(r[3]), bytes(r[4]), int(r[5])) for r in rows]


def _station(r: Tuple) -> StationRow:
    return StationRow(
        id=r[0],
        first_seen_ms=int(r[1]),
        last_seen_ms=int(r[2]),
        status=r[3],
        status_ms=None if r[4] is None else int(r[4]),
        lat=r[5],
        lon=r[6],
        stats=None if r[7] is None else json.loads(r[7]),
        stats_ms=None if r[8] is None else int(r[8]),
        last_detection_ms=None if r[9] is None else int(r[9]),
    )


def _detection(r: Tuple) -> DetectionRow:
    return DetectionRow(
        id=r[0],
        station=r[1],
        start_ms=int(r[2]),
        end_ms=int(r[3]),
        scientific=r[4],
        common=r[5],
        code=r[6],
        is_bird=bool(r[7]),
        confidence=float(r[8]),
        source=r[9],
        channel=r[10],
        lat=r[11],
        lon=r[12],
        received_ms=int(r[13]),
        resends=int(r[14]),
        payload=r[15],
    )
