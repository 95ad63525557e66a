"""The detection message: the stored record plus the schema version and the station's place.

``docs/schema/detection.v1.json`` is its JSON Schema; tests validate every message against it.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

SCHEMA_VERSION = 1


def detection_payload(
    record_json: str, lat: Optional[float] = None, lon: Optional[float] = None
) -> bytes:
    """Build the message published for one stored detection (``detections.record_json``)."""
    message: Dict[str, Any] = {"schema_version": SCHEMA_VERSION}
    message.update(json.loads(record_json))
    if lat is not None and lon is not None:
        message["lat"], message["lon"] = lat, lon
    return json.dumps(message, separators=(",", ":")).encode("utf-8")
