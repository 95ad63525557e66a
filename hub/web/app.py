"""The FastAPI application: the JSON API under ``/api`` (OpenAPI at ``/api/openapi.json``), the
dashboard's pages and its static files. No interactive docs page: Swagger UI would load from a
CDN, and the hub fetches nothing at run time."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from birdd.hub import api
from birdd.hub.store import Store, StoreError, StoreUnavailable
from birdd.hub.web.clips import ClipService, add_clips
from birdd.hub.web.pages import add_pages

log = logging.getLogger("birdd")
STATIC = Path(__file__).resolve().parent / "static"


def create_app(
    store: Store, refresh_s: float = 5.0, clips: Optional[ClipService] = None
) -> FastAPI:
    """``clips``: the clips' routes (upload, playback, spectrogram); None: no clips."""
    app = FastAPI(
        title="birdd hub",
        summary="Detections from a network of birdd stations.",
        version="1",
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.store = store
    add_errors(app, store)
    add_api(app, store)
    if clips is not None:
        add_clips(app, store, clips)
    add_pages(app, refresh_s)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app


def add_errors(app: FastAPI, store: Store) -> None:
    def error(code: int, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=code)

    @app.exception_handler(api.BadRequest)
    async def bad_request(request: Request, exc: api.BadRequest) -> JSONResponse:
        return error(400, exc)

    @app.exception_handler(api.NotFound)
    async def not_found(request: Request, exc: api.NotFound) -> JSONResponse:
        return error(404, exc)

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> JSONResponse:
        if isinstance(exc, StoreUnavailable):
            try:  # the next request finds a fresh connection (PostgreSQL restarted)
                store.reconnect()
            except StoreError as again:
                log.warning("hub web: the database: %s", again)
        return error(503, exc)


def add_api(app: FastAPI, store: Store) -> None:
    @app.get("/api/stations", tags=["stations"])
    def stations() -> Dict[str, Any]:
        """Every station that has reported: status (online / offline), last seen, last
        detection, position, and its last stats report (analysis speed, outbox backlog, disk
        free, input level, …)."""
        return api.stations_json(store)

    @app.get("/api/stations/{station}", tags=["stations"])
    def station(station: str) -> Dict[str, Any]:
        """One station (404 when it never reported)."""
        return api.one_station_json(store, station)

    @app.get("/api/stations/{station}/day", tags=["stations"])
    def station_day(station: str, day: Optional[str] = None) -> Dict[str, Any]:
        """A station's day (``day`` = YYYY-MM-DD in the hub's time zone, default today): each
        species with its count, first and last heard; detections per species per hour."""
        return api.station_day_json(store, station, day)

    @app.get("/api/detections", tags=["detections"])
    def detections(
        request: Request,
        station: Optional[str] = None,
        species: Optional[str] = None,
        since: Optional[str] = None,
        until: Optional[str] = None,
        min_confidence: Optional[str] = None,
        limit: Optional[str] = None,
        before: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Detections newest first, each with its ``id``. ``species``: scientific name;
        ``since`` (inclusive) / ``until`` (exclusive): ISO 8601 or epoch ms, on the start time;
        ``limit`` 1…1000. ``next`` is the cursor of the following page: pass it as ``before``."""
        return api.detections_json(store, dict(request.query_params))

    @app.get("/api/detections.csv", tags=["detections"], response_class=StreamingResponse)
    def detections_csv(request: Request) -> StreamingResponse:
        """Every detection matching the filters of ``/api/detections``, as CSV."""
        rows = api.detections_csv(store, dict(request.query_params))
        header = next(rows)  # the filters are checked before the answer starts
        return StreamingResponse(
            _csv_lines(header, rows),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="detections.csv"'},
        )

    @app.get("/api/species", tags=["species"])
    def species(
        station: Optional[str] = None, since: Optional[str] = None, until: Optional[str] = None
    ) -> Dict[str, Any]:
        """Each species heard in the range (at ``station`` or anywhere), most detected first:
        count, first and last heard, number of stations, best confidence."""
        return api.species_json(store, station, since or "", until or "")

    @app.get("/api/species/{scientific:path}", tags=["species"])
    def one_species(scientific: str, days: Optional[str] = None) -> Dict[str, Any]:
        """Where and when a species was heard over the last ``days`` days: per station, and
        its daily counts across all stations."""
        return api.species_page_json(store, scientific, days or "")


def _csv_lines(header: Any, rows: Iterator[Any]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for row in rows:
        writer.writerow(row)
        if buffer.tell() > 65536:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
