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
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from birdd.hub.store import schema
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

T = TypeVar("T")

INSERT_DETECTION = """INSERT INTO detections (id, station, start_ms, end_ms, scientific, common,
    code, is_bird, confidence, source, channel, lat, lon, received_ms, resends, payload)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)
    ON CONFLICT (id) DO UPDATE SET resends = detections.resends + 1"""

LATER = "CASE WHEN excluded.{0} > stations.{0} THEN excluded.{0} ELSE stations.{0} END"
TOUCH_STATION = f"""INSERT INTO stations (id, first_seen_ms, last_seen_ms, lat, lon,
    last_detection_ms) VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (id) DO UPDATE SET
    last_seen_ms = {LATER.format("last_seen_ms")},
    lat = COALESCE(excluded.lat, stations.lat),
    lon = COALESCE(excluded.lon, stations.lon),
    last_detection_ms = COALESCE({LATER.format("last_detection_ms")},
        excluded.last_detection_ms)"""

STATUS_CHANGE = """INSERT INTO station_status (station, status, retained, received_ms)
    SELECT ?, ?, ?, ? WHERE NOT EXISTS
    (SELECT 1 FROM stations WHERE id = ? AND status = ?)"""
SET_STATUS = """UPDATE stations SET
    status_ms = CASE WHEN COALESCE(status, '') <> ? THEN ? ELSE status_ms END,
    status = ? WHERE id = ?"""

INSERT_STATS = "INSERT INTO station_stats (station, received_ms, stats) VALUES (?, ?, ?)"
SET_STATS = "UPDATE stations SET stats = ?, stats_ms = ? WHERE id = ?"

INSERT_REJECTED = """INSERT INTO rejected (topic, reason, size, payload, received_ms)
    VALUES (?, ?, ?, ?, ?)"""

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


class SqlStore(Store):
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
        conn.execute(self._sql(statement), tuple(params))

    def _executemany(self, conn: Any, statement: str, params: List[Tuple]) -> None:
        if params:
            conn.cursor().executemany(self._sql(statement), params)

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
        self._executemany(conn, INSERT_DETECTION, [_detection_params(d) for d in batch.detections])
        self._executemany(conn, TOUCH_STATION, _station_touches(batch))
        for status in batch.statuses:
            station, value = status.station, status.status
            self._execute(
                conn,
                STATUS_CHANGE,
                (station, value, status.retained, status.received_ms, station, value),
            )
            self._execute(conn, SET_STATUS, (value, status.received_ms, value, station))
        for stats in batch.stats:
            self._execute(conn, INSERT_STATS, (stats.station, stats.received_ms, stats.stats))
            self._execute(conn, SET_STATS, (stats.stats, stats.received_ms, stats.station))
        self._executemany(
            conn,
            INSERT_REJECTED,
            [(r.topic, r.reason, r.size, r.payload, r.received_ms) for r in batch.rejected],
        )

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
        where, params = _where(station=station, since_ms=since_ms, until_ms=until_ms)
        statement = (
            "SELECT scientific, MIN(common), MIN(code), COUNT(*), MIN(start_ms), MAX(start_ms), "
            f"COUNT(DISTINCT station), MAX(confidence) FROM detections{where} "
            "GROUP BY scientific ORDER BY COUNT(*) DESC, scientific"
        )
        rows = self._run(False, lambda c: self._rows(c, statement, params))
        return [
            SpeciesCount(r[0], r[1], r[2], int(r[3]), int(r[4]), int(r[5]), int(r[6]), float(r[7]))
            for r in rows
        ]

    def species_stations(
        self, scientific: str, since_ms: Optional[int] = None, until_ms: Optional[int] = None
    ) -> List[StationCount]:
        where, params = _where(species=scientific, since_ms=since_ms, until_ms=until_ms)
        statement = (
            "SELECT station, COUNT(*), MIN(start_ms), MAX(start_ms), MAX(confidence) "
            f"FROM detections{where} GROUP BY station ORDER BY COUNT(*) DESC, station"
        )
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
        where, params = _where(
            station=station, species=species, since_ms=since_ms, until_ms=until_ms
        )
        width, offset = bucket_s * 1000, offset_s * 1000
        statement = (
            f"SELECT ((start_ms + ?) / ?) * ? - ?, scientific, COUNT(*) FROM detections{where} "
            "GROUP BY 1, 2 ORDER BY 1, 2"
        )
        rows = self._run(
            False, lambda c: self._rows(c, statement, [offset, width, width, offset, *params])
        )
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


def _detection_params(d: NewDetection) -> Tuple:
    return (
        d.id,
        d.station,
        d.start_ms,
        d.end_ms,
        d.scientific,
        d.common,
        d.code,
        d.is_bird,
        d.confidence,
        d.source,
        d.channel,
        d.lat,
        d.lon,
        d.received_ms,
        d.payload,
    )


def _station_touches(batch: Batch) -> List[Tuple]:
    """One row per station the batch heard from: (id, first seen, last seen, lat, lon, last
    detection)."""
    seen: Dict[str, List[Any]] = OrderedDict()

    def touch(station: str, at_ms: int) -> List[Any]:
        row = seen.setdefault(station, [station, at_ms, at_ms, None, None, None])
        row[1], row[2] = min(row[1], at_ms), max(row[2], at_ms)
        return row

    for d in batch.detections:
        row = touch(d.station, d.received_ms)
        if d.lat is not None and d.lon is not None:
            row[3], row[4] = d.lat, d.lon
        row[5] = max(row[5] or 0, d.received_ms)
    for status in batch.statuses:
        touch(status.station, status.received_ms)
    for stats in batch.stats:
        touch(stats.station, stats.received_ms)
    return [tuple(row) for row in seen.values()]


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
