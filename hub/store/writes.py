"""What ``SqlStore.write`` runs: the constant statements and their parameters."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, List, Set, Tuple

from birdd.hub.store.base import Batch, NewDetection

INSERT_DETECTION = """INSERT INTO detections (id, station, start_ms, end_ms, scientific, common,
    code, is_bird, confidence, source, channel, lat, lon, received_ms, resends, payload)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)
    ON CONFLICT (id) DO NOTHING"""
# SQLite: which of a batch's ids (a JSON array) are stored already
STORED_IDS = "SELECT id FROM detections WHERE id IN (SELECT value FROM json_each(?))"
# PostgreSQL: the whole batch in one statement, one array per column, inserted in the batch's
# order (so of two copies of an id in one batch the first goes in, as row by row)
INSERT_DETECTIONS = """INSERT INTO detections (id, station, start_ms, end_ms, scientific, common,
    code, is_bird, confidence, source, channel, lat, lon, received_ms, resends, payload)
    SELECT id, station, start_ms, end_ms, scientific, common, code, is_bird, confidence, source,
    channel, lat, lon, received_ms, 0, payload
    FROM unnest(?::text[], ?::text[], ?::bigint[], ?::bigint[], ?::text[], ?::text[], ?::text[],
    ?::boolean[], ?::double precision[], ?::text[], ?::text[], ?::double precision[],
    ?::double precision[], ?::bigint[], ?::text[]) WITH ORDINALITY AS new (id, station,
    start_ms, end_ms, scientific, common, code, is_bird, confidence, source, channel, lat, lon,
    received_ms, payload, n)
    ORDER BY n
    ON CONFLICT (id) DO NOTHING RETURNING id"""
RESENT = "UPDATE detections SET resends = resends + 1 WHERE id = ?"

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


def detection_params(d: NewDetection) -> Tuple:
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


def went_in(ids: List[str], returned: Set[str]) -> List[bool]:
    """Per detection of a batch, whether it was inserted, from the ids the insert returned: the
    first copy of a returned id; a later copy in the same batch is a resend."""
    left = set(returned)
    flags = []
    for id_ in ids:
        flags.append(id_ in left)
        left.discard(id_)
    return flags


def station_touches(batch: Batch) -> List[Tuple]:
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
