"""What the hub stores and how it is read: the rows, the queries, and the ``Store`` interface
both backends implement (``sqlite.SqliteStore``, ``postgres.PostgresStore``).

Times are integers, milliseconds since the Unix epoch (UTC), in the database and here: one
representation for both backends, compared and bucketed with plain integer arithmetic.

Threads: a store serialises its own calls (one connection, one lock), so one instance may be
shared by the threads of a web server; the ingest writer opens its own instance.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple


class StoreError(Exception):
    """A problem retrying will not fix (a bad path or DSN, a refused login, a broken schema);
    the text is one line naming it and the fix."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or is busy right now: retry the same work later."""


# -- what the ingest writes ----------------------------------------------------------------


@dataclass
class NewDetection:
    """One detection message that passed ``detection.v1.json``. Not frozen: the ingest makes
    thousands a second, and a frozen dataclass's ``__init__`` costs six times as much."""

    id: str
    station: str
    start_ms: int
    end_ms: int
    scientific: str
    common: str
    code: Optional[str]
    is_bird: bool
    confidence: float
    source: str
    channel: str
    """A channel index as text, or ``mix``."""
    lat: Optional[float]
    lon: Optional[float]
    payload: str
    """The message as received (JSON text)."""
    received_ms: int


@dataclass(frozen=True)
class NewStatus:
    """``<prefix>/<station>/status``: ``online`` or ``offline`` (retained; the last will)."""

    station: str
    status: str
    retained: bool
    received_ms: int


@dataclass(frozen=True)
class NewStats:
    """``<prefix>/<station>/stats``: the station's health report (a JSON object)."""

    station: str
    stats: str
    received_ms: int


@dataclass(frozen=True)
class NewRejected:
    """A message kept aside: not JSON, too big, or failing the schema; never dropped."""

    topic: str
    reason: str
    payload: bytes
    """The payload, cut to ``REJECTED_KEEP_BYTES``; ``size`` is its real length."""
    size: int
    received_ms: int


REJECTED_KEEP_BYTES = 4096


@dataclass
class Batch:
    """What one transaction writes."""

    detections: List[NewDetection] = field(default_factory=list)
    statuses: List[NewStatus] = field(default_factory=list)
    stats: List[NewStats] = field(default_factory=list)
    rejected: List[NewRejected] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.detections) + len(self.statuses) + len(self.stats) + len(self.rejected)


# -- what the queries return -----------------------------------------------------------------


@dataclass(frozen=True)
class DetectionQuery:
    """Filters for ``Store.detections``: newest first, at most ``limit`` rows.

    ``species`` is a scientific name (exact). ``since_ms`` is inclusive, ``until_ms``
    exclusive (detection start times). ``before`` is the keyset cursor for the next page: the
    ``(start_ms, id)`` of the last row of the previous page (``DetectionRow.cursor``).
    """

    station: Optional[str] = None
    species: Optional[str] = None
    since_ms: Optional[int] = None
    until_ms: Optional[int] = None
    min_confidence: Optional[float] = None
    limit: int = 100
    before: Optional[Tuple[int, str]] = None


@dataclass(frozen=True)
class DetectionRow:
    id: str
    station: str
    start_ms: int
    end_ms: int
    scientific: str
    common: str
    code: Optional[str]
    is_bird: bool
    confidence: float
    source: str
    channel: str
    lat: Optional[float]
    lon: Optional[float]
    received_ms: int
    resends: int
    """How many more times the same detection id arrived (station re-sends, redeliveries)."""
    payload: str
    """The original message, JSON text (``clip``, ``model``, ``windows`` live here)."""

    @property
    def cursor(self) -> Tuple[int, str]:
        return (self.start_ms, self.id)

    def message(self) -> Dict[str, Any]:
        """The detection message as the station published it."""
        return dict(json.loads(self.payload))


@dataclass(frozen=True)
class StationRow:
    id: str
    first_seen_ms: int
    last_seen_ms: int
    """The last message of any kind from the station."""
    status: Optional[str]
    """``online`` / ``offline`` from its retained status topic; None before the first one."""
    status_ms: Optional[int]
    lat: Optional[float]
    lon: Optional[float]
    stats: Optional[Dict[str, Any]]
    """The last ``…/stats`` report: analysis speed, outbox backlog, disk, input level, …"""
    stats_ms: Optional[int]
    last_detection_ms: Optional[int]
    """Reception time of its newest detection."""


@dataclass(frozen=True)
class SpeciesCount:
    scientific: str
    common: str
    code: Optional[str]
    detections: int
    first_ms: int
    """Start time of the earliest detection in the range."""
    last_ms: int
    stations: int
    max_confidence: float


@dataclass(frozen=True)
class StationCount:
    """One station's share of a species' detections (the species page: where it was heard)."""

    station: str
    detections: int
    first_ms: int
    last_ms: int
    max_confidence: float


@dataclass(frozen=True)
class ActivityBucket:
    start_ms: int
    """The bucket's start (UTC, shifted by the query's ``offset_s``)."""
    scientific: str
    detections: int


@dataclass(frozen=True)
class StatusEvent:
    station: str
    status: str
    retained: bool
    received_ms: int


@dataclass(frozen=True)
class StatsReport:
    station: str
    received_ms: int
    stats: Dict[str, Any]


@dataclass(frozen=True)
class RejectedRow:
    id: int
    topic: str
    reason: str
    size: int
    payload: bytes
    received_ms: int


@dataclass(frozen=True)
class ClipRow:
    """A detection's clip as the hub holds it: the file is ``<clips.dir>/<sha256[:2]>/<sha256>
    .flac`` (content-addressed: two detections with the same audio share one file)."""

    detection_id: str
    station: str
    sha256: str
    size: int
    duration_s: float
    sample_rate: int
    received_ms: int


@dataclass(frozen=True)
class HeldClip:
    """A clip as the budget weighs it: its file, and its detection's time, species and
    confidence (the upload time and no species when its detection message has not come)."""

    detection_id: str
    station: str
    sha256: str
    size: int
    start_ms: int
    scientific: str
    confidence: Optional[float]


class Store(ABC):
    """The hub's database. Every method is one transaction."""

    @abstractmethod
    def schema_version(self) -> int:
        """The newest migration applied (``schema.MIGRATIONS``)."""

    @abstractmethod
    def write(self, batch: Batch) -> None:
        """Store a batch in one transaction. A detection id already stored is not stored again:
        its ``resends`` grows by one. ``StoreUnavailable``: nothing was written, retry."""

    @abstractmethod
    def stations(self) -> List[StationRow]:
        """Every station that ever sent anything, by id."""

    @abstractmethod
    def station(self, station: str) -> Optional[StationRow]: ...

    @abstractmethod
    def detections(self, query: DetectionQuery) -> List[DetectionRow]:
        """Newest first (start time, then id descending)."""

    @abstractmethod
    def count_detections(self, query: DetectionQuery) -> int:
        """How many rows ``detections`` would return without ``limit`` and ``before``."""

    @abstractmethod
    def species(
        self,
        station: Optional[str] = None,
        since_ms: Optional[int] = None,
        until_ms: Optional[int] = None,
    ) -> List[SpeciesCount]:
        """Each species detected in the range (at ``station`` or anywhere), most detected first,
        with first / last heard and the number of stations."""

    @abstractmethod
    def species_stations(
        self, scientific: str, since_ms: Optional[int] = None, until_ms: Optional[int] = None
    ) -> List[StationCount]:
        """Where ``scientific`` was detected in the range: per station, most detections first."""

    @abstractmethod
    def activity(
        self,
        bucket_s: int,
        station: Optional[str] = None,
        species: Optional[str] = None,
        since_ms: Optional[int] = None,
        until_ms: Optional[int] = None,
        offset_s: int = 0,
    ) -> List[ActivityBucket]:
        """Detections per species per bucket (3600: hourly, 86400: daily), in time order.
        ``offset_s`` shifts the bucket edges to local time (UTC+2: 7200)."""

    @abstractmethod
    def status_history(
        self, station: str, since_ms: Optional[int] = None, limit: int = 1000
    ) -> List[StatusEvent]:
        """Status changes, newest first."""

    @abstractmethod
    def stats_history(
        self, station: str, since_ms: Optional[int] = None, limit: int = 1000
    ) -> List[StatsReport]:
        """Stats reports, newest first."""

    @abstractmethod
    def rejected(self, limit: int = 100, before_id: Optional[int] = None) -> List[RejectedRow]:
        """Rejected messages, newest first."""

    @abstractmethod
    def add_clip(self, clip: ClipRow) -> Tuple[ClipRow, bool]:
        """Store a clip's row unless its detection id has one: (the row now stored, whether
        this call stored it). The caller compares a row that was already there."""

    @abstractmethod
    def clips(self, detection_ids: List[str]) -> Dict[str, ClipRow]:
        """The clips of these detections that the hub holds, by detection id."""

    @abstractmethod
    def held_clips(self) -> List[HeldClip]:
        """Every clip the hub holds, for the disk budget."""

    @abstractmethod
    def forget_clips(self, detection_ids: List[str]) -> None:
        """Delete these clips' rows (their files are gone); the detections stay."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def reconnect(self) -> None:
        """Drop the connection and open a new one (after ``StoreUnavailable``)."""
