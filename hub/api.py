"""The hub's HTTP API as plain functions of the store and the query: what each ``/api/…`` path
answers (JSON-ready dicts), kept apart from the web server (``hub.web``) so they are tested and
reused without one.

Times in the answers are ISO 8601 UTC (``2024-05-15T06:00:00.000Z``); ``since`` / ``until`` take
ISO 8601 or epoch milliseconds. A *day* (``2024-05-15``) is a calendar day in the hub's local
time zone; its answers carry ``utc_offset_s`` so a page shows hours as the hub counts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Dict, Iterator, List, Optional, Tuple

from birdd.hub.store import DetectionQuery, DetectionRow, SpeciesCount, StationRow, Store
from birdd.hub.store.base import ActivityBucket, ClipRow, StationCount

MAX_LIMIT = 1000
MAX_DAYS = 366
CSV_MAX_ROWS = 1_000_000
QUERY_KEYS = {"station", "species", "since", "until", "limit", "before", "min_confidence"}
HOUR_MS, DAY_MS = 3_600_000, 86_400_000


class BadRequest(ValueError):
    """A query parameter that does not parse; the text says which and how."""


class NotFound(LookupError):
    """A station or species the store has never heard of."""


def iso(ms: Optional[int]) -> Optional[str]:
    if ms is None:
        return None
    when = datetime.fromtimestamp(ms / 1000, timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_time(name: str, text: str) -> int:
    """Epoch milliseconds from ISO 8601 (``Z`` or an offset; naive is UTC) or an integer."""
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name}={text!r}: an ISO 8601 time or epoch milliseconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp() * 1000)


# -- days in the hub's time zone ------------------------------------------------------------


@dataclass(frozen=True)
class Day:
    """One local calendar day: ``[since_ms, until_ms)`` and its UTC offset at midnight."""

    day: date
    since_ms: int
    until_ms: int
    offset_s: int


def local_midnight(day: date) -> datetime:
    return datetime.combine(day, time()).astimezone()


def today() -> date:
    return datetime.now().astimezone().date()


def parse_day(text: Optional[str]) -> Day:
    """``YYYY-MM-DD`` (None or empty: today) as a ``Day`` in the hub's time zone."""
    if text:
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise BadRequest(f"day={text!r}: a date such as 2024-05-15") from None
    else:
        day = today()
    start, end = local_midnight(day), local_midnight(day + timedelta(days=1))
    offset = start.utcoffset() or timedelta(0)
    return Day(day, _ms(start), _ms(end), int(offset.total_seconds()))


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


# -- rows as JSON ---------------------------------------------------------------------------


def station_json(row: StationRow) -> Dict[str, Any]:
    return {
        "id": row.id,
        "status": row.status,
        "status_at": iso(row.status_ms),
        "first_seen": iso(row.first_seen_ms),
        "last_seen": iso(row.last_seen_ms),
        "last_detection": iso(row.last_detection_ms),
        "lat": row.lat,
        "lon": row.lon,
        "stats": row.stats,
        "stats_at": iso(row.stats_ms),
    }


def clip_urls(row: ClipRow) -> Dict[str, str]:
    """Where a clip the hub holds plays (``audio/flac``) and its spectrogram."""
    base = f"/api/clips/{row.station}/{row.detection_id}"
    return {"clip_url": base, "spectrogram_url": f"{base}/spectrogram.png"}


def detection_json(row: DetectionRow, clip: Optional[ClipRow] = None) -> Dict[str, Any]:
    """``clip`` is the station's record of it; ``clip_url`` and ``spectrogram_url`` are there
    only when the station uploaded it to this hub (``held``)."""
    held = clip_urls(clip) if clip is not None and clip.station == row.station else {}
    return {
        "id": row.id,
        "station": row.station,
        "start": iso(row.start_ms),
        "end": iso(row.end_ms),
        "species": {"scientific": row.scientific, "common": row.common, "code": row.code},
        "is_bird": row.is_bird,
        "confidence": row.confidence,
        "source": row.source,
        "channel": row.channel,
        "lat": row.lat,
        "lon": row.lon,
        "received": iso(row.received_ms),
        "resends": row.resends,
        "clip": row.message().get("clip"),
        **held,
    }


def species_count_json(row: SpeciesCount) -> Dict[str, Any]:
    return {
        "scientific": row.scientific,
        "common": row.common,
        "code": row.code,
        "detections": row.detections,
        "first": iso(row.first_ms),
        "last": iso(row.last_ms),
        "stations": row.stations,
        "max_confidence": row.max_confidence,
    }


def station_count_json(row: StationCount) -> Dict[str, Any]:
    return {
        "station": row.station,
        "detections": row.detections,
        "first": iso(row.first_ms),
        "last": iso(row.last_ms),
        "max_confidence": row.max_confidence,
    }


# -- the answers ----------------------------------------------------------------------------


def stations_json(store: Store) -> Dict[str, Any]:
    return {"stations": [station_json(row) for row in store.stations()]}


def one_station_json(store: Store, station: str) -> Dict[str, Any]:
    row = store.station(station)
    if row is None:
        raise NotFound(f"no station {station!r} has reported to this hub")
    return station_json(row)


def detection_query(params: Dict[str, str]) -> DetectionQuery:
    unknown = set(params) - QUERY_KEYS
    if unknown:
        raise BadRequest(f"unknown parameter {sorted(unknown)[0]!r}; known: {sorted(QUERY_KEYS)}")
    limit = _int("limit", params.get("limit") or "100")
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit={limit}: from 1 to {MAX_LIMIT}")
    before: Optional[Tuple[int, str]] = None
    if params.get("before"):
        start, _, ident = params["before"].partition(".")
        before = (_int("before", start), ident)
    return DetectionQuery(
        station=params.get("station") or None,
        species=params.get("species") or None,
        since_ms=parse_time("since", params["since"]) if params.get("since") else None,
        until_ms=parse_time("until", params["until"]) if params.get("until") else None,
        min_confidence=_float("min_confidence", params["min_confidence"])
        if params.get("min_confidence")
        else None,
        limit=limit,
        before=before,
    )


def detections_json(store: Store, params: Dict[str, str]) -> Dict[str, Any]:
    query = detection_query(params)
    rows = store.detections(query)
    cursor = rows[-1].cursor if len(rows) == query.limit else None
    clips = store.clips([row.id for row in rows])
    return {
        "detections": [detection_json(row, clips.get(row.id)) for row in rows],
        "next": f"{cursor[0]}.{cursor[1]}" if cursor else None,
    }


CSV_COLUMNS = ("id", "station", "start", "end", "scientific", "common", "confidence", "source")
CSV_COLUMNS += ("channel", "lat", "lon", "received", "resends")


def detections_csv(store: Store, params: Dict[str, str]) -> Iterator[List[Any]]:
    """The header, then every matching row (newest first), read page by page on the keyset
    so memory stays flat; ``limit`` here is the page size, not a cap."""
    params = {**params, "limit": str(MAX_LIMIT)}
    query = detection_query(params)
    yield list(CSV_COLUMNS)
    sent = 0
    while sent < CSV_MAX_ROWS:
        rows = store.detections(query)
        yield from (_csv_row(r) for r in rows)
        if len(rows) < query.limit:
            return
        sent += len(rows)
        query = DetectionQuery(**{**query.__dict__, "before": rows[-1].cursor})


def _csv_row(r: DetectionRow) -> List[Any]:
    start, end, received = iso(r.start_ms), iso(r.end_ms), iso(r.received_ms)
    species = [r.scientific, r.common, r.confidence]
    return [
        r.id,
        r.station,
        start,
        end,
        *species,
        r.source,
        r.channel,
        r.lat,
        r.lon,
        received,
        r.resends,
    ]


def species_json(store: Store, station: Optional[str], since: str, until: str) -> Dict[str, Any]:
    rows = store.species(
        station=station or None,
        since_ms=parse_time("since", since) if since else None,
        until_ms=parse_time("until", until) if until else None,
    )
    return {"species": [species_count_json(row) for row in rows]}


def station_day_json(store: Store, station: str, day_text: Optional[str]) -> Dict[str, Any]:
    """A station's day: each species with its count and first / last heard, and the hourly
    activity per species (the station page)."""
    one_station_json(store, station)
    day = parse_day(day_text)
    rows = store.species(station=station, since_ms=day.since_ms, until_ms=day.until_ms)
    day_span = (day.since_ms, day.until_ms)
    buckets = store.activity(
        3600, station=station, since_ms=day.since_ms, until_ms=day.until_ms, offset_s=day.offset_s
    )
    return {
        "station": station,
        "day": day.day.isoformat(),
        "utc_offset_s": day.offset_s,
        "species": [species_count_json(row) for row in rows],
        "hourly": series_json(
            buckets, {row.scientific: row.common for row in rows}, *day_span, HOUR_MS
        ),
    }


def species_page_json(store: Store, scientific: str, days_text: str) -> Dict[str, Any]:
    """Where and when one species was heard: per station over the last ``days`` local days,
    and its daily counts across all stations."""
    days = _int("days", days_text or "30")
    if not 1 <= days <= MAX_DAYS:
        raise BadRequest(f"days={days}: from 1 to {MAX_DAYS}")
    last = parse_day(None)
    first = parse_day((last.day - timedelta(days=days - 1)).isoformat())
    since, until = first.since_ms, last.until_ms
    newest = store.detections(DetectionQuery(species=scientific, limit=1))
    if not newest:
        raise NotFound(f"no detection of {scientific!r} (give the scientific name)")
    buckets = store.activity(
        86400, species=scientific, since_ms=since, until_ms=until, offset_s=first.offset_s
    )
    return {
        "scientific": scientific,
        "common": newest[0].common,
        "since": iso(since),
        "until": iso(until),
        "utc_offset_s": first.offset_s,
        "stations": [
            station_count_json(row) for row in store.species_stations(scientific, since, until)
        ],
        "daily": series_json(buckets, {scientific: newest[0].common}, since, until, DAY_MS),
    }


def series_json(
    buckets: List[ActivityBucket],
    names: Dict[str, str],
    since_ms: int,
    until_ms: int,
    width_ms: int,
) -> Dict[str, Any]:
    """Buckets as a chart wants them: the bucket starts, and one count per bucket for each
    species (``names``: scientific → common, in the order to draw them)."""
    starts = list(range(since_ms, until_ms, width_ms))
    index = {start: i for i, start in enumerate(starts)}
    counts: Dict[str, List[int]] = {name: [0] * len(starts) for name in names}
    for bucket in buckets:
        slot = index.get(bucket.start_ms)
        if slot is None:  # a bucket edge moved by a daylight-saving change that day
            slot = min(len(starts) - 1, max(0, (bucket.start_ms - since_ms) // width_ms))
        counts.setdefault(bucket.scientific, [0] * len(starts))[slot] += bucket.detections
    return {
        "starts": [iso(start) for start in starts],
        "series": [
            {"scientific": name, "common": names.get(name, name), "counts": values}
            for name, values in counts.items()
        ],
    }


def _int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BadRequest(f"{name}={text!r}: a whole number") from None


def _float(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise BadRequest(f"{name}={text!r}: a number") from None
