"""The clips stations upload: what the hub accepts and where it keeps them.

A clip is accepted when it is a FLAC file soundfile opens, no larger than ``clips.max_mb``,
and (when the station sends ``X-Clip-SHA256``) has that SHA-256. Files are content-addressed,
``<dir>/<sha256[:2]>/<sha256>.flac``, written under a temporary name and renamed, so a clip
uploaded twice (or by two requests at once) is one file, and a half-written one is never
seen. The spectrogram PNG beside it is rendered on its first request and kept."""

from __future__ import annotations

import io
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import soundfile

from birdd.hub.spectrogram import spectrogram_png

NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
"""Station and detection ids in a clip's URL (a station id is an MQTT topic level)."""
SHA256 = re.compile(r"[0-9a-f]{64}")


class BadClip(ValueError):
    """An upload the hub refuses: ``status`` is the HTTP answer, the text one line with the
    fix."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


@dataclass(frozen=True)
class Audio:
    duration_s: float
    sample_rate: int


def check_names(station: str, detection_id: str) -> None:
    for what, value in (("station", station), ("detection id", detection_id)):
        if not NAME.fullmatch(value):
            raise BadClip(400, f"{what} {value!r}: letters, digits, '_', '.', '-' only (1-128)")


def check_digest(digest: str, claimed: Optional[str]) -> None:
    """The body's SHA-256 against the one the station sent (when it sent one)."""
    if claimed is None:
        return
    if not SHA256.fullmatch(claimed):
        raise BadClip(400, f"X-Clip-SHA256 {claimed!r}: give 64 lowercase hex digits")
    if claimed != digest:
        raise BadClip(
            400,
            f"the body's SHA-256 is {digest}, X-Clip-SHA256 says {claimed}: the upload was "
            "cut or changed on the way; send the clip again",
        )


def inspect_flac(data: bytes) -> Audio:
    """The clip's length and rate; ``BadClip`` (415) when it is not a FLAC soundfile opens."""
    if not data:
        raise BadClip(400, "empty body: send the clip's FLAC bytes as the request body")
    try:
        info = soundfile.info(io.BytesIO(data))
    except (RuntimeError, soundfile.SoundFileError) as exc:
        first = getattr(exc, "error_string", "") or type(exc).__name__
        raise BadClip(
            415, f"not an audio file soundfile can open ({first}): send the station's .flac clip"
        ) from None
    if info.format != "FLAC":
        raise BadClip(
            415, f"a {info.format} file, not FLAC: the hub keeps FLAC clips (clips.format: flac)"
        )
    if info.frames <= 0 or info.samplerate <= 0:
        raise BadClip(415, "a FLAC file without audio: send the station's .flac clip")
    return Audio(round(info.frames / info.samplerate, 6), int(info.samplerate))


class ClipFiles:
    """The hub's clips folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def audio(self, sha256: str) -> Path:
        return self.folder / sha256[:2] / f"{sha256}.flac"

    def save(self, data: bytes, sha256: str) -> None:
        """Write the clip unless a file of its content is there already."""
        path = self.audio(sha256)
        if path.is_file() and path.stat().st_size == len(data):
            return
        _write_atomic(path, data)

    def spectrogram(self, sha256: str) -> Path:
        """The clip's spectrogram PNG, rendered now if it never was."""
        path = self.audio(sha256).with_suffix(".png")
        if not path.is_file():
            _write_atomic(path, spectrogram_png(self.audio(sha256)))
        return path


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=path.name, suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
