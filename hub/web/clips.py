"""The clips' routes: stations upload (``PUT``, with their own token), pages play them back
(``GET``: the FLAC and its spectrogram PNG, behind the hub's own token like every page).

``PUT /api/clips/STATION/DETECTION_ID`` with the FLAC as the body and
``Authorization: Bearer TOKEN`` (the station's line in ``clips.tokens_file``) answers 201 when
stored, 200 when the hub already holds this clip for this detection (a retry: stored once),
409 when it holds another clip for it, 4xx with one line naming the problem and the fix for a
body it refuses (nothing is stored), and 503 while its database is unreachable (retry)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Dict, Optional, Tuple

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from birdd.hub.api import clip_urls
from birdd.hub.clipfiles import BadClip, ClipFiles, check_digest, check_names, inspect_flac
from birdd.hub.store import Store
from birdd.hub.store.base import ClipRow
from birdd.hub.store.sql import now_ms
from birdd.hub.web.auth import authorised

UPLOAD_PREFIX = "/api/clips/"
DIGEST_HEADER = "x-clip-sha256"


DRAIN_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ClipService:
    """What the routes need: the folder, the stations' tokens and the size limit."""

    files: ClipFiles
    tokens: Dict[str, str]
    max_bytes: int


def is_upload(scope: Dict) -> bool:
    """A clip upload, which the station's token guards instead of the hub's (``TokenAuth``)."""
    return scope.get("method") == "PUT" and str(scope.get("path", "")).startswith(UPLOAD_PREFIX)


def add_clips(app: FastAPI, store: Store, service: ClipService) -> None:
    @app.exception_handler(BadClip)
    async def refused(request: Request, exc: BadClip) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.put("/api/clips/{station}/{detection_id}", tags=["clips"], status_code=201)
    async def upload(station: str, detection_id: str, request: Request) -> JSONResponse:
        """A station's clip of one of its detections (FLAC body, the station's token)."""
        try:
            check_names(station, detection_id)
            authenticate(service.tokens, station, request.headers.get("authorization"))
        except BadClip:
            await discard_body(request, service.max_bytes)
            raise
        data = await read_body(request, service.max_bytes)
        claimed = request.headers.get(DIGEST_HEADER)
        names = (station, detection_id)
        return await run_in_threadpool(accept, store, service.files, names, data, claimed)

    @app.get("/api/clips/{station}/{detection_id}", tags=["clips"], response_class=FileResponse)
    def audio(station: str, detection_id: str) -> Response:
        """The clip of a detection (audio/flac)."""
        row = held(store, station, detection_id)
        return FileResponse(service.files.audio(row.sha256), media_type="audio/flac")

    @app.get(
        "/api/clips/{station}/{detection_id}/spectrogram.png",
        tags=["clips"],
        response_class=FileResponse,
    )
    def spectrogram(station: str, detection_id: str) -> Response:
        """The clip's spectrogram (image/png; 0-12 kHz, rendered once and kept)."""
        row = held(store, station, detection_id)
        return FileResponse(service.files.spectrogram(row.sha256), media_type="image/png")


def authenticate(tokens: Dict[str, str], station: str, header: Optional[str]) -> None:
    if not tokens:
        raise BadClip(403, "this hub takes no clips: give it clips.tokens_file (hub.yaml)")
    expected = tokens.get(station)
    if expected is None:
        raise BadClip(
            401, f"station {station!r} has no upload token here: add it to clips.tokens_file"
        )
    if not authorised(header, expected):
        raise BadClip(
            401,
            f"wrong or missing token for station {station!r}: send 'Authorization: Bearer "
            "TOKEN' with its line of the hub's clips.tokens_file (clips.upload.token_file)",
        )


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused (413) once it passes ``max_bytes``; one up to DRAIN_BYTES past the
    limit is still read to its end first (``consume``), a larger one is not worth reading to
    say so."""
    too_big = BadClip(
        413, f"the clip is larger than this hub's clips.max_mb ({max_bytes / 1e6:g} MB)"
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + DRAIN_BYTES:
        raise too_big
    kept, size = await consume(request, max_bytes, max_bytes + DRAIN_BYTES)
    if size > max_bytes:
        raise too_big
    return kept


async def discard_body(request: Request, max_bytes: int) -> None:
    """Read and drop the body of a refused upload (up to ``max_bytes``)."""
    await consume(request, 0, max_bytes)


async def consume(request: Request, keep_bytes: int, read_bytes: int) -> Tuple[bytes, int]:
    """Read the body until its end or past ``read_bytes``, keeping it only while it is within
    ``keep_bytes``; returns what was kept and how much was read. A refused body is read before
    the answer: a client such as urllib sends the whole body before it reads the answer, and
    an answer sent over an unread body can reach it as a connection reset instead of the 4xx
    that says what to fix (seen in the suite)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > read_bytes:
            break
        if size <= keep_bytes:
            chunks.append(chunk)
    return b"".join(chunks), size


def accept(
    store: Store, files: ClipFiles, names: Tuple[str, str], data: bytes, claimed: Optional[str]
) -> JSONResponse:
    """Check the body (its SHA-256, FLAC) and keep it: in a worker thread, as hashing a
    clip of up to ``clips.max_mb`` would hold up the event loop."""
    digest = hashlib.sha256(data).hexdigest()
    check_digest(digest, claimed)
    audio = inspect_flac(data)
    station, detection_id = names
    row = ClipRow(detection_id, station, digest, len(data), audio.duration_s, audio.sample_rate, 0)
    return keep(store, files, data, row)


def keep(store: Store, files: ClipFiles, data: bytes, row: ClipRow) -> JSONResponse:
    """Store the file, then its row; answer what became of it."""
    found = store.clips([row.detection_id]).get(row.detection_id)
    if found is None:
        files.save(data, row.sha256)
        found, stored = store.add_clip(replace(row, received_ms=now_ms()))
        if stored:
            return JSONResponse(answer(found, "stored"), status_code=201)
    if (found.sha256, found.station) != (row.sha256, row.station):
        raise BadClip(
            409,
            f"detection {row.detection_id} already has another clip here (station "
            f"{found.station!r}, SHA-256 {found.sha256}); detection ids are unique per clip",
        )
    files.save(data, row.sha256)  # the file back if it was lost
    return JSONResponse(answer(found, "already stored"), status_code=200)


def answer(row: ClipRow, what: str) -> Dict[str, object]:
    return {"result": what, "sha256": row.sha256, "duration_s": row.duration_s, **clip_urls(row)}


def held(store: Store, station: str, detection_id: str) -> ClipRow:
    row = store.clips([detection_id]).get(detection_id)
    if row is None or row.station != station:
        raise BadClip(404, f"no clip of detection {detection_id!r} from station {station!r}")
    return row
