"""The file outputs of ``birdd analyze``: one table per file under ``--output DIR`` (Raven
selection tables by default, named as BirdNET-Analyzer names them), or one combined output
(``--combined``, or ``--format`` without ``--output``: stdout) with the files in job order.

Each per-file table is written through the simulate mode's sinks (``file_sink``: a temporary
name renamed once complete), so an interrupted job leaves no half table behind. Parquet (a
file only) is written as the text formats are, one row group per 65,536 detections.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

from birdd.daemon.analyze.paths import AudioFile
from birdd.daemon.records import Detection, RunInfo
from birdd.daemon.sinks.base import Sink
from birdd.daemon.sinks.files import file_sink, make_output_sink
from birdd.daemon.sinks.parquet import import_pyarrow

SUFFIXES = {
    "raven": ".BirdNET.selection.table.txt",
    "csv": ".BirdNET.results.csv",
    "jsonl": ".birdd.jsonl",
    "table": ".birdd.txt",
    "parquet": ".birdd.parquet",
}


class TextOutputs:
    """Per-file tables or one combined output, or nothing (the store only)."""

    def __init__(self, fmt: Optional[str], output: Optional[Path], combined: bool) -> None:
        self.fmt = fmt or ("raven" if output is not None and not combined else None)
        self.folder = output if output is not None and not combined else None
        self.combined_path = output if combined else None
        self.combined = combined or (fmt is not None and output is None)
        self._check()
        self._sink: Optional[Sink] = None
        self._run: Optional[RunInfo] = None
        self._waiting: Dict[int, List[Detection]] = {}
        self._next = 0

    @property
    def to_stdout(self) -> bool:
        """Detections go to stdout (the summary then goes to stderr)."""
        return self.combined and self.combined_path is None

    def table_path(self, item: AudioFile) -> Optional[Path]:
        """Where the file's own table goes (None: no per-file tables)."""
        if self.folder is None or self.fmt is None:
            return None
        relative = item.relative
        return self.folder / relative.with_name(relative.stem + SUFFIXES[self.fmt])

    def open(self, run: RunInfo) -> None:
        self._run = run
        if self.combined and self.fmt is not None:
            self._sink = make_output_sink(self.fmt, self.combined_path)
            self._sink.open(run)

    def file_done(self, index: int, item: AudioFile, detections: Sequence[Detection]) -> None:
        """A file analysed (in any order): its table now, the combined output in job order."""
        table = self.table_path(item)
        if table is not None and self._run is not None:
            sink = file_sink(str(self.fmt), table)
            sink.open(self._run)
            sink.write(detections)
            sink.close("complete")
        if self._sink is not None:
            self._waiting[index] = list(detections)
            self._release()

    def file_failed(self, index: int) -> None:
        if self._sink is not None:
            self._waiting[index] = []
            self._release()

    def close(self, status: str) -> None:
        if self._sink is not None:
            self._sink.close(status)

    def _release(self) -> None:
        assert self._sink is not None
        while self._next in self._waiting:
            detections = self._waiting.pop(self._next)
            if detections:
                self._sink.write(detections)
            self._next += 1

    def _check(self) -> None:
        if self.folder is not None and self.folder.exists() and not self.folder.is_dir():
            raise ValueError(
                f"--output {self.folder} is a file: give a folder for one table per recording, "
                "or add --combined for one output file"
            )
        if self.combined_path is not None and self.combined_path.is_dir():
            raise ValueError(
                f"--output {self.combined_path} is a folder: --combined writes one file; "
                "give a file name, or drop --combined for one table per recording"
            )
        if self.combined and self.fmt is None:
            raise ValueError("--combined needs --format (table, jsonl, csv, raven or parquet)")
        if self.fmt == "parquet":
            import_pyarrow()  # without the extra: one line naming it, before any work
            if self.to_stdout:
                raise ValueError(
                    "--format parquet writes a binary file, not text: give --output DIR for "
                    "one file per recording, or --combined --output FILE.parquet"
                )
