"""How detections look as text: an aligned table, JSON lines, CSV, a Raven selection table."""

from __future__ import annotations

import abc
import csv
import io
import json
from datetime import timezone
from typing import Callable, Dict, Iterable, List, Sequence

from birdd.daemon.records import Detection


class TextFormat(abc.ABC):
    """Renders detections as text; one instance per run, since Raven numbers its selections."""

    def header(self) -> str:
        return ""

    @abc.abstractmethod
    def render(self, detections: Sequence[Detection]) -> str:
        """The lines for one batch, each ending in a newline."""


class TableFormat(TextFormat):
    """Aligned columns for people watching a terminal."""

    _ROW = "{:<12}  {:>9}  {:>9}  {:<30}  {:<30}  {:>10}{}\n"

    def header(self) -> str:
        titles = ("start (UTC)", "begin (s)", "end (s)", "common name", "scientific name")
        return self._ROW.format(*titles, "confidence", "")

    def render(self, detections: Sequence[Detection]) -> str:
        return "".join(self._row(detection) for detection in detections)

    def _row(self, d: Detection) -> str:
        start = d.start.astimezone(timezone.utc)
        clock = start.strftime("%H:%M:%S.") + f"{start.microsecond // 1000:03d}"
        tag = "" if d.species.is_bird else "  (non-bird)"
        return self._ROW.format(
            clock,
            f"{d.offset_start:.3f}",
            f"{d.offset_end:.3f}",
            d.species.common,
            d.species.scientific,
            f"{d.confidence:.4f}",
            tag,
        )


class JsonLinesFormat(TextFormat):
    """One ``Detection.to_record()`` per line: the same record SQLite and MQTT carry."""

    def render(self, detections: Sequence[Detection]) -> str:
        return "".join(json.dumps(detection.to_record()) + "\n" for detection in detections)


class CsvFormat(TextFormat):
    COLUMNS = (
        "id",
        "start",
        "end",
        "offset_start",
        "offset_end",
        "scientific",
        "common",
        "code",
        "is_bird",
        "confidence",
        "channel",
        "source",
    )

    def header(self) -> str:
        return _delimited([self.COLUMNS], ",")

    def render(self, detections: Sequence[Detection]) -> str:
        return _delimited([self._row(detection) for detection in detections], ",")

    @staticmethod
    def _row(d: Detection) -> List[object]:
        record = d.to_record()
        return [
            record["id"],
            record["start"],
            record["end"],
            f"{d.offset_start:.3f}",
            f"{d.offset_end:.3f}",
            d.species.scientific,
            d.species.common,
            d.species.code or "",
            "true" if d.species.is_bird else "false",
            f"{d.confidence:.4f}",
            d.channel,
            d.source,
        ]


class RavenFormat(TextFormat):
    """A Raven Pro selection table, laid out as BirdNET-Analyzer writes it."""

    COLUMNS = (
        "Selection",
        "View",
        "Channel",
        "Begin Time (s)",
        "End Time (s)",
        "Low Freq (Hz)",
        "High Freq (Hz)",
        "Species Code",
        "Common Name",
        "Confidence",
    )

    def __init__(self) -> None:
        self._selections = 0

    def header(self) -> str:
        return _delimited([self.COLUMNS], "\t")

    def render(self, detections: Sequence[Detection]) -> str:
        return _delimited([self._row(detection) for detection in detections], "\t")

    def _row(self, d: Detection) -> List[object]:
        self._selections += 1
        channel = d.channel + 1 if isinstance(d.channel, int) else 1  # Raven counts from 1
        return [
            self._selections,
            "Spectrogram 1",
            channel,
            f"{d.offset_start:.3f}",
            f"{d.offset_end:.3f}",
            0,
            15000,
            d.species.code or "",
            d.species.common,
            f"{d.confidence:.4f}",
        ]


FORMATS: Dict[str, Callable[[], TextFormat]] = {
    "table": TableFormat,
    "jsonl": JsonLinesFormat,
    "csv": CsvFormat,
    "raven": RavenFormat,
}


def _delimited(rows: Iterable[Sequence[object]], delimiter: str) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter, lineterminator="\n").writerows(rows)
    return buffer.getvalue()
