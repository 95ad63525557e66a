"""``hub.messages.decode``: a station's message to the row the hub stores (fast tier: no
broker, no database; the ingest's system tests cover the whole path)."""

from __future__ import annotations

import json

import pytest

from birdd.daemon.mqtt.messages import load_schema_check
from birdd.hub.messages import decode
from birdd.hub.store.base import NewDetection, NewRejected

TOPIC = "birdd/garden/detections"
MESSAGE = {
    "schema_version": 1,
    "id": "0123456789abcdef0123456789abcdef",
    "station": "garden",
    "source": "hw:1,0",
    "channel": "mix",
    "offset_start": 0.0,
    "offset_end": 3.0,
    "start": "2024-05-02T04:00:15.250Z",
    "end": "2024-05-02T04:00:18.250Z",
    "species": {"scientific": "Turdus migratorius", "common": "American Robin", "code": "amerob"},
    "is_bird": True,
    "confidence": 0.8,
    "model": {"name": "BirdNET", "version": "2.4", "sha256": "5e" * 32},
}


@pytest.fixture(scope="module")
def check():
    return load_schema_check()


def _decode(check, payload: bytes):
    return decode(TOPIC, payload, False, 1_714_622_420_000, check)


def test_a_detection_becomes_its_row_with_exact_millisecond_times(check):
    row = _decode(check, json.dumps(MESSAGE).encode())
    assert isinstance(row, NewDetection)
    assert (row.id, row.station, row.scientific, row.code) == (
        MESSAGE["id"],
        "garden",
        "Turdus migratorius",
        "amerob",
    )
    assert (row.start_ms, row.end_ms) == (1_714_622_415_250, 1_714_622_418_250)
    # where seconds * 1000 as a float falls short: 1.001 s is 1000.9999… ms
    early = {**MESSAGE, "start": "1970-01-01T00:00:01.001Z", "end": "1969-12-31T23:59:59.999Z"}
    row = _decode(check, json.dumps(early).encode())
    assert (row.start_ms, row.end_ms) == (1001, -1)


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"\xef\xbb\xbf" + json.dumps(MESSAGE).encode(), "not JSON (Unexpected UTF-8 BOM"),
        (json.dumps({**MESSAGE, "confidence": float("nan")}).encode(), "not JSON (NaN is not"),
        (json.dumps({**MESSAGE, "start": "2024-02-30T04:00:15.000Z"}).encode(), "/start: "),
        (b"\xff", "not UTF-8 text"),
    ],
)
def test_what_does_not_fit_is_rejected_with_the_reason(check, payload, reason):
    row = _decode(check, payload)
    assert isinstance(row, NewRejected)
    assert row.reason.startswith(reason), row.reason
