"""The sink interface: every output of detections (SQLite, stdout, files, MQTT) is a ``Sink``."""

from __future__ import annotations

import abc
from typing import Sequence

from birdd.daemon.records import Detection, Gap, RunInfo


class SinkError(RuntimeError):
    """An output failed; the message is one line naming the sink and what went wrong."""


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
