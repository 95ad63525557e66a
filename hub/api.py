"""The hub's HTTP API (JSON): ``GET /api/stations`` and ``GET /api/detections``.

The answers are plain functions of the store and the query string (``stations_json``,
``detections_json``), so a richer web server (the dashboard) can serve the same JSON; the
server here is the standard library's, bound to localhost unless told otherwise.

``GET /api/detections?station=&species=&since=&until=&limit=&before=``: ``since`` / ``until``
are ISO 8601 times (``2024-05-15T06:00:00Z``) or epoch milliseconds; the answer carries each
detection's ``id`` and a ``next`` cursor for the following page (pass it as ``before``).
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

from birdd.hub.config import HubConfig
from birdd.hub.store import DetectionQuery, DetectionRow, StationRow, Store, StoreError

log = logging.getLogger("birdd")

MAX_LIMIT = 1000
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
QUERY_KEYS = {"station", "species", "since", "until", "limit", "before", "min_confidence"}


class BadRequest(ValueError):
    """A query parameter that does not parse; the text says which and how."""


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


def detection_json(row: DetectionRow) -> Dict[str, Any]:
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
    }


def stations_json(store: Store) -> Dict[str, Any]:
    return {"stations": [station_json(row) for row in store.stations()]}


def detection_query(params: Dict[str, str]) -> DetectionQuery:
    unknown = set(params) - QUERY_KEYS
    if unknown:
        raise BadRequest(f"unknown parameter {sorted(unknown)[0]!r}; known: {sorted(QUERY_KEYS)}")
    limit = _int("limit", params.get("limit", "100"))
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
    return {
        "detections": [detection_json(row) for row in rows],
        "next": f"{cursor[0]}.{cursor[1]}" if cursor else None,
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


ROUTES: Dict[str, Callable[[Store, Dict[str, str]], Dict[str, Any]]] = {
    "/api/stations": lambda store, params: stations_json(store),
    "/api/detections": detections_json,
}


def _handler(store: Store) -> type:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            route = ROUTES.get(parts.path.rstrip("/"))
            if route is None:
                self._send(404, {"error": f"no such path; try one of {sorted(ROUTES)}"})
                return
            params = {key: values[-1] for key, values in parse_qs(parts.query).items()}
            try:
                self._send(200, route(store, params))
            except BadRequest as exc:
                self._send(400, {"error": str(exc)})
            except StoreError as exc:
                self._send(503, {"error": str(exc)})

        def _send(self, code: int, body: Dict[str, Any]) -> None:
            data = json.dumps(body).encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: one line per request would drown the ingest's messages."""

    return Handler


class WebServer:
    def __init__(self, config: HubConfig, store: Store) -> None:
        host, _, port = config.web.listen.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(
                f"--listen {config.web.listen!r}: give HOST:PORT, e.g. {host or '127.0.0.1'}:8640"
            )
        if host.strip("[]") not in LOOPBACK:
            raise ValueError(
                f"--listen {config.web.listen}: the API has no authentication yet, so it binds "
                "to localhost only (127.0.0.1:PORT); publish it through a proxy with auth"
            )
        self.store = store
        try:
            self.server = ThreadingHTTPServer((host.strip("[]"), int(port)), _handler(store))
        except OSError as exc:
            raise ValueError(f"--listen {config.web.listen}: {exc.strerror}") from None
        self.address = f"http://{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="hub web", daemon=True
        )

    def start(self) -> WebServer:
        self._thread.start()
        log.info("hub: the API answers at %s/api/stations", self.address)
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.store.close()


def start_web(config: HubConfig, opener: Callable[[], Store]) -> WebServer:
    """The web server on ``config.web.listen`` with its own store connection."""
    return WebServer(config, opener()).start()
