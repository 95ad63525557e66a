"""Detections counted per (station, species, UTC hour): the ``detection_hours`` table, kept in
the same transaction as the detections it counts (migration 2 creates and backfills it).

The dashboard's aggregates (the species of a day across stations, a species' 30 days, a
station's day) read whole hours from here and only the partial hours at a range's edges from
``detections``; the answers are exactly those of grouping the raw rows. A bucket keeps the
count, the first and last start time, the highest confidence and the smallest common name and
eBird code (what ``MIN`` over the raw rows gives), so every aggregate composes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from birdd.hub.store.base import NewDetection

HOUR_MS = 3_600_000

# Floor to the hour (also for times before 1970, where SQL's % would round towards zero).
HOUR_OF_START = f"start_ms - ((start_ms % {HOUR_MS}) + {HOUR_MS}) % {HOUR_MS}"

MIGRATION: List[str] = [
    """CREATE TABLE detection_hours (
        station TEXT NOT NULL,
        hour_ms BIGINT NOT NULL,
        scientific TEXT NOT NULL,
        detections BIGINT NOT NULL,
        first_ms BIGINT NOT NULL,
        last_ms BIGINT NOT NULL,
        max_confidence DOUBLE PRECISION NOT NULL,
        common TEXT NOT NULL,
        code TEXT,
        PRIMARY KEY (station, hour_ms, scientific)
    )""",
    "CREATE INDEX detection_hours_time ON detection_hours (hour_ms)",
    "CREATE INDEX detection_hours_species ON detection_hours (scientific, hour_ms)",
    f"""INSERT INTO detection_hours (station, hour_ms, scientific, detections, first_ms,
        last_ms, max_confidence, common, code)
        SELECT station, {HOUR_OF_START}, scientific, COUNT(*), MIN(start_ms), MAX(start_ms),
        MAX(confidence), MIN(common), MIN(code) FROM detections GROUP BY 1, 2, 3""",
]

_SMALLER = (
    "CASE WHEN excluded.{0} < detection_hours.{0} THEN excluded.{0} ELSE detection_hours.{0} END"
)
_LARGER = (
    "CASE WHEN excluded.{0} > detection_hours.{0} THEN excluded.{0} ELSE detection_hours.{0} END"
)
_UPDATE = f"""ON CONFLICT (station, hour_ms, scientific) DO UPDATE SET
    detections = detection_hours.detections + excluded.detections,
    first_ms = {_SMALLER.format("first_ms")},
    last_ms = {_LARGER.format("last_ms")},
    max_confidence = {_LARGER.format("max_confidence")},
    common = {_SMALLER.format("common")},
    code = CASE WHEN detection_hours.code IS NULL OR excluded.code < detection_hours.code
        THEN excluded.code ELSE detection_hours.code END"""
ADD = f"""INSERT INTO detection_hours (station, hour_ms, scientific, detections, first_ms,
    last_ms, max_confidence, common, code) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
    {_UPDATE}"""
# PostgreSQL: every row of ``hour_rows`` in one statement; the rows of one bucket (another
# common name or code) are merged first, since one statement may not update a row twice
ADD_ALL = f"""INSERT INTO detection_hours (station, hour_ms, scientific, detections, first_ms,
    last_ms, max_confidence, common, code)
    SELECT station, hour_ms, scientific, SUM(n), MIN(first_ms), MAX(last_ms), MAX(confidence),
    MIN(common), MIN(code)
    FROM unnest(?::text[], ?::bigint[], ?::text[], ?::bigint[], ?::bigint[], ?::bigint[],
    ?::double precision[], ?::text[], ?::text[]) AS hours (station, hour_ms, scientific, n,
    first_ms, last_ms, confidence, common, code)
    GROUP BY station, hour_ms, scientific ORDER BY station, hour_ms, scientific
    {_UPDATE}"""


def hour_rows(inserted: List[NewDetection]) -> List[Tuple]:
    """``ADD``'s parameters for the detections a transaction inserted (never the resends).

    Names are not compared here: detections with another common name or code go in their own
    row, and the database keeps the smaller one with its own collation, as ``MIN`` would.
    """
    groups: Dict[Tuple, List[Any]] = {}
    for d in inserted:
        key = (d.station, d.start_ms - d.start_ms % HOUR_MS, d.scientific, d.common, d.code)
        group = groups.get(key)
        if group is None:
            groups[key] = [1, d.start_ms, d.start_ms, d.confidence]
        else:
            group[0] += 1
            group[1], group[2] = min(group[1], d.start_ms), max(group[2], d.start_ms)
            group[3] = max(group[3], d.confidence)
    ordered = sorted(groups.items(), key=lambda item: item[0][:3])  # one lock order
    return [(s, h, sp, *group, common, code) for (s, h, sp, common, code), group in ordered]


# -- reads ---------------------------------------------------------------------------------

# the columns of the aggregates' parts (``union``): whole hours, then edges from detections
SPECIES_HOURS = """SELECT station, scientific, common, code, detections AS n, first_ms, last_ms,
    max_confidence AS confidence"""
SPECIES_RAW = """SELECT station, scientific, common, code, 1 AS n, start_ms AS first_ms,
    start_ms AS last_ms, confidence"""
ACTIVITY_HOURS = "SELECT ((hour_ms + ?) / ?) * ? - ? AS bucket, scientific, detections AS n"
ACTIVITY_RAW = "SELECT ((start_ms + ?) / ?) * ? - ? AS bucket, scientific, 1 AS n"


RAW_FILTERS = {
    "station": "station = ?",
    "species": "scientific = ?",
    "since": "start_ms >= ?",
    "until": "start_ms < ?",
}
HOUR_FILTERS = {
    "station": "station = ?",
    "species": "scientific = ?",
    "since": "hour_ms >= ?",
    "until": "hour_ms < ?",
}


@dataclass(frozen=True)
class Split:
    """A start-time range ``[since, until)`` (None: open) as the whole hours in it, read from
    ``detection_hours`` (``hours``: ``[from, to)`` of ``hour_ms``, None when there is no whole
    hour), and the partial hours at its edges, read from ``detections``."""

    hours: Optional[Tuple[Optional[int], Optional[int]]]
    edges: List[Tuple[Optional[int], Optional[int]]]


def split(since: Optional[int], until: Optional[int]) -> Split:
    first = None if since is None else -(-since // HOUR_MS) * HOUR_MS
    end = None if until is None else until // HOUR_MS * HOUR_MS
    if first is not None and end is not None and first >= end:
        whole = [(since, until)] if since < until else []  # type: ignore[operator]
        return Split(None, whole)
    edges: List[Tuple[Optional[int], Optional[int]]] = []
    if since is not None and first is not None and since < first:
        edges.append((since, first))
    if until is not None and end is not None and end < until:
        edges.append((end, until))
    return Split((first, end), edges)


def _where(filters: Dict[str, str], values: Dict[str, Any]) -> Tuple[str, List[Any]]:
    used = [(filters[name], value) for name, value in values.items() if value is not None]
    if not used:
        return "", []
    return " WHERE " + " AND ".join(text for text, _ in used), [value for _, value in used]


def union(
    hours_select: str,
    raw_select: str,
    part: Split,
    station: Optional[str] = None,
    species: Optional[str] = None,
    select_params: Sequence[Any] = (),
) -> Tuple[str, List[Any]]:
    """``SELECT … UNION ALL SELECT …`` over the whole hours and the edges of ``part``, and its
    parameters (``select_params`` first in each part: the selects' own placeholders); ``""``
    when the range holds nothing. The selects are the caller's constants."""
    texts: List[str] = []
    params: List[Any] = []
    ranges = [(HOUR_FILTERS, hours_select, "detection_hours", part.hours)] if part.hours else []
    ranges += [(RAW_FILTERS, raw_select, "detections", edge) for edge in part.edges]
    for filters, select, table, (since, until) in ranges:
        where, values = _where(
            filters, {"station": station, "species": species, "since": since, "until": until}
        )
        texts.append(f"{select} FROM {table}{where}")
        params += [*select_params, *values]
    return " UNION ALL ".join(texts), params


def hourly(width_ms: int, offset_ms: int, since_ms: Optional[int]) -> bool:
    """Whether activity buckets of ``width_ms`` shifted by ``offset_ms`` hold whole UTC hours
    (and every bucket starts at or after 1970), so ``detection_hours`` can fill them."""
    whole = width_ms % HOUR_MS == 0 and offset_ms % HOUR_MS == 0
    return whole and since_ms is not None and since_ms + offset_ms >= 0
