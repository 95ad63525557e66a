"""From one MQTT message to what the store writes: a detection, a status, a stats report, or a
rejected message with the reason. Nothing is dropped: whatever fails is kept as rejected.

Topics are ``<prefix>/<station>/detections|status|stats``; a detection's station is the one in
its (schema-checked) payload, a status's or a report's is the topic level before its kind.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Union

from birdd.daemon.mqtt.messages import SchemaCheck, Skipped, decode_detection, printable
from birdd.hub.store.base import (
    REJECTED_KEEP_BYTES,
    NewDetection,
    NewRejected,
    NewStats,
    NewStatus,
)

KINDS = ("detections", "status", "stats")
EPOCH, ONE_MS = datetime(1970, 1, 1), timedelta(milliseconds=1)  # UTC, as the "Z" says
MAX_STATS_BYTES = 64 * 1024
Decoded = Union[NewDetection, NewStatus, NewStats, NewRejected]


class Rejected(Exception):
    """Why a message is kept aside."""


def decode(
    topic: str, payload: bytes, retained: bool, received_ms: int, check: SchemaCheck
) -> Decoded:
    """The row for one message; a ``NewRejected`` naming the problem when it does not fit."""
    try:
        kind, station = _kind(topic)
        if kind == "detections":
            return _detection(payload, received_ms, check)
        if kind == "status":
            return _status(station, payload, retained, received_ms)
        return _stats(station, payload, received_ms)
    except (Rejected, Skipped) as exc:
        return NewRejected(
            topic, str(exc), payload[:REJECTED_KEEP_BYTES], len(payload), received_ms
        )


def _kind(topic: str) -> tuple:
    parts = topic.rsplit("/", 2)
    if len(parts) != 3 or parts[2] not in KINDS:
        raise Rejected(f"not a station topic (<prefix>/<station>/{'|'.join(KINDS)})")
    return parts[2], parts[1]


def _detection(payload: bytes, received_ms: int, check: SchemaCheck) -> NewDetection:
    message = decode_detection(payload, check)
    if b"\\u0000" in payload and _has_nul(message):  # JSON text spells a NUL only so
        raise Rejected("a text field holds a NUL character (U+0000)")
    species, channel = message["species"], message["channel"]
    lat, lon = message.get("lat"), message.get("lon")
    return NewDetection(
        id=message["id"],
        station=message["station"],
        start_ms=_epoch_ms(message["start"], "start"),
        end_ms=_epoch_ms(message["end"], "end"),
        scientific=species["scientific"],
        common=species["common"],
        code=species["code"],
        is_bird=message["is_bird"],
        confidence=float(message["confidence"]),
        source=message["source"],
        channel=str(channel),
        lat=None if lat is None or lon is None else float(lat),
        lon=None if lat is None or lon is None else float(lon),
        payload=payload.decode("utf-8"),
        received_ms=received_ms,
    )


def _epoch_ms(text: str, field: str) -> int:
    """The schema's pattern fixed the form (``2024-05-02T04:00:15.000Z``); this finds the
    impossible dates. ``fromisoformat``: strptime took a tenth of the ingest's time; integer
    milliseconds from the epoch, exact (``timestamp() * 1000`` is a float) and faster."""
    try:
        when = datetime.fromisoformat(text[:-1])
    except ValueError:
        raise Rejected(f"/{field}: {printable(text, 40)} is not a date and time") from None
    return (when - EPOCH) // ONE_MS


def _has_nul(value: Any) -> bool:
    """PostgreSQL's text cannot hold U+0000; SQLite could: both refuse it, the same way."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


def _status(station: str, payload: bytes, retained: bool, received_ms: int) -> NewStatus:
    if payload not in (b"online", b"offline"):
        raise Rejected("a status is 'online' or 'offline'")
    return NewStatus(station, payload.decode("ascii"), retained, received_ms)


def _stats(station: str, payload: bytes, received_ms: int) -> NewStats:
    if len(payload) > MAX_STATS_BYTES:
        raise Rejected(f"{len(payload)} bytes, over the {MAX_STATS_BYTES}-byte limit")
    try:
        report = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Rejected("stats are a JSON object; this is not JSON") from None
    if not isinstance(report, dict):
        raise Rejected("stats are a JSON object")
    if _has_nul(report):
        raise Rejected("a text field holds a NUL character (U+0000)")
    return NewStats(station, json.dumps(report, separators=(",", ":")), received_ms)
