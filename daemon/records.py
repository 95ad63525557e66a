"""The values that flow between pipeline stages."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, Optional, Protocol, Union

import numpy as np

from birdd.engines.models.labels import Species

Channel = Union[int, str]
"""A channel index, or ``"mix"`` for the downmix of all channels."""


class Clock(Protocol):
    """Maps a stream's sample index (at the model's rate) to UTC."""

    @property
    def sample_rate(self) -> int: ...

    def utc(self, sample: int) -> datetime: ...


@dataclass(frozen=True)
class StreamClock:
    """Maps a sample index at ``sample_rate`` to UTC; ``origin`` says where the time came from."""

    start: datetime
    sample_rate: int
    origin: str

    def utc(self, sample: int) -> datetime:
        return self.start + timedelta(seconds=sample / self.sample_rate)


@dataclass(frozen=True)
class Gap:
    """An outage of one source: no audio from ``start`` to ``end`` (UTC epoch seconds)."""

    source: str
    start: float
    end: float
    reason: str

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


@dataclass(frozen=True)
class Window:
    """A model-sized slice of one stream; ``valid`` < len(samples) when zero-padded at the end.

    ``start_utc`` and ``end_utc`` are the stream clock's times of ``start_sample`` and of
    ``start_sample + valid``, stamped when the window is cut: later stages date audio from
    them and never ask a clock.
    """

    index: int
    start_sample: int
    samples: np.ndarray
    valid: int
    source: str
    channel: Channel
    start_utc: datetime
    end_utc: datetime

    @property
    def end_sample(self) -> int:
        """The sample after the last valid one."""
        return self.start_sample + self.valid


@dataclass(frozen=True)
class ScoredWindow:
    """A window's raw model outputs (logits or probabilities, one per class) and, when
    post-processing asked for them (a gate), its embedding from the same engine call."""

    window: Window
    scores: np.ndarray
    embedding: Optional[np.ndarray] = None


@dataclass(frozen=True)
class ClipInfo:
    """The saved audio of one detection (``clips``): where, how long, and its file's SHA-256."""

    path: str
    duration_s: float
    sha256: str

    def to_json(self) -> Dict[str, Any]:
        return {"path": self.path, "duration_s": self.duration_s, "sha256": self.sha256}


@dataclass(frozen=True)
class Detection:
    """One species heard over ``[offset_start, offset_end)`` seconds of a stream."""

    id: str
    species: Species
    species_index: int
    confidence: float
    offset_start: float
    offset_end: float
    start: datetime
    end: datetime
    source: str
    channel: Channel
    station: str
    model: Dict[str, str]
    windows: int = 1
    clip: Optional[ClipInfo] = None

    def to_record(self) -> Dict[str, Any]:
        """The JSON record printed as jsonl, stored in SQLite and published over MQTT;
        ``clip`` only when one was saved."""
        record: Dict[str, Any] = {
            "id": self.id,
            "station": self.station,
            "source": self.source,
            "channel": self.channel,
            "offset_start": round(self.offset_start, 3),
            "offset_end": round(self.offset_end, 3),
            "start": iso_utc(self.start),
            "end": iso_utc(self.end),
            "species": {
                "scientific": self.species.scientific,
                "common": self.species.common,
                "code": self.species.code,
            },
            "is_bird": self.species.is_bird,
            "confidence": round(self.confidence, 4),
            "windows": self.windows,
            "model": dict(self.model),
        }
        if self.clip is not None:
            record["clip"] = self.clip.to_json()
        return record


def new_detection_id() -> str:
    """A random, globally unique id that every sink and every re-send carries unchanged."""
    return uuid.uuid4().hex


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a ``Z``: ``2024-05-02T04:00:03.000Z``."""
    utc = moment.astimezone(timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def parse_iso_utc(text: str) -> Optional[datetime]:
    """Parse what ``iso_utc`` writes (and other ISO 8601 forms); None when it is not a time."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


MODES = ("simulate", "live", "analyze")
END_STATUSES = ("complete", "interrupted", "failed")
"""How a run ends: every detection delivered, stopped early (Ctrl-C, crash), or an error."""


@dataclass(frozen=True)
class RunInfo:
    """One run of the pipeline over one source, as every sink sees it."""

    run_id: str
    station: str
    mode: str
    source: str
    started_at: datetime
    clock_origin: str
    """Where the stream's start time came from: "filename", "mtime", "--start-time", ..."""
    model: Dict[str, str]
    """The model identity: ``name``, ``version``, ``sha256``."""
    config_json: str

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"run mode must be one of {', '.join(MODES)}, not {self.mode!r}")


def check_end_status(status: str) -> None:
    if status not in END_STATUSES:
        raise ValueError(f"run status must be one of {', '.join(END_STATUSES)}, not {status!r}")
