"""The sink interface: every output of detections (SQLite, stdout, files, MQTT) is a ``Sink``."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import datetime
from typing import Dict, Sequence

from birdd.daemon.records import Detection, Gap

MODES = ("simulate", "live")
END_STATUSES = ("complete", "interrupted", "failed")
"""How a run ends: every detection delivered, stopped early (Ctrl-C, crash), or an error."""


class SinkError(RuntimeError):
    """An output failed; the message is one line naming the sink and what went wrong."""


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


class Sink(abc.ABC):
    """Receives the detections of one run, in order, from a single thread at a time.

    ``open`` runs in the caller's thread (so a bad path fails before any audio is read);
    ``write`` and ``close`` may run in another thread, one call at a time.
    """

    @property
    def name(self) -> str:
        """A short name for logs and errors, e.g. ``csv to out.csv``."""
        return type(self).__name__

    @abc.abstractmethod
    def open(self, run: RunInfo) -> None:
        """Prepare for the run's detections."""

    @abc.abstractmethod
    def write(self, detections: Sequence[Detection]) -> None:
        """Store or print one batch of detections."""

    def record_gap(self, gap: Gap) -> None:
        """A source had no audio from ``gap.start`` to ``gap.end``; sinks that keep history
        (SQLite) store it, the others ignore it."""

    @abc.abstractmethod
    def close(self, status: str) -> None:
        """Finish the run with a status from ``END_STATUSES`` and release every resource."""
