"""Text outputs of simulate mode, to stdout or to a file, in one of the ``formats``.

A regular file is written under a temporary name and renamed when the run ends, so a failed
run leaves no half file. Anything else (``/dev/null``, a FIFO) is written in place: renaming
over a device node would replace it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Sequence, TextIO, Union

from birdd.daemon.records import Detection, RunInfo, check_end_status
from birdd.daemon.sinks.base import Sink, SinkError
from birdd.daemon.sinks.formats import FORMATS, TextFormat
from birdd.daemon.sinks.parquet import ParquetSink
from birdd.daemon.sinks.staged import finish, temporary_path


class OutputSink(Sink):
    """Writes one text format to a stream (flushed per batch) or to a file (renamed at the end)."""

    def __init__(
        self, fmt: str, path: Union[str, Path, None] = None, stream: Optional[TextIO] = None
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
        if (path is None) == (stream is None):
            raise ValueError("OutputSink needs either a path or a stream")
        self.fmt = fmt
        self.path = Path(path) if path is not None else None
        self._stream = stream
        self._format: TextFormat = FORMATS[fmt]()
        self._pipe_closed = False

    @property
    def name(self) -> str:
        return f"{self.fmt} output to {self.path or 'stdout'}"

    def open(self, run: RunInfo) -> None:
        if self.path is not None and _is_special(self.path):
            self._stream = self.path.open("w", encoding="utf-8", newline="")
        elif self.path is not None:
            self._stream = _open_temporary(self.path)
        self._emit(self._format.header())

    def write(self, detections: Sequence[Detection]) -> None:
        self._emit(self._format.render(detections))

    def close(self, status: str) -> None:
        check_end_status(status)
        if self.path is None:
            return  # a stream is flushed after every batch and belongs to the caller
        if _is_special(self.path):
            self._require_stream().close()
            return
        finish(self.path, status, self._require_stream().close)

    def _emit(self, text: str) -> None:
        """Write and flush; a reader that went away (``| head``) ends the output quietly."""
        if self._pipe_closed:
            return
        stream = self._require_stream()
        try:
            stream.write(text)
            stream.flush()
        except BrokenPipeError:
            self._pipe_closed = True
            _discard_further_output(stream)

    def _require_stream(self) -> TextIO:
        if self._stream is None:
            raise RuntimeError("OutputSink used before open()")
        return self._stream


def make_output_sink(fmt: str, path: Union[str, Path, None]) -> Sink:
    """A sink printing ``fmt`` to stdout when ``path`` is None or "-", else writing that file
    (Parquet: a file only)."""
    if path is None or str(path) == "-":
        if fmt == "parquet":
            raise ValueError(
                "--format parquet writes a binary file, not text: give --output FILE.parquet"
            )
        return OutputSink(fmt, stream=sys.stdout)
    return file_sink(fmt, Path(path))


def file_sink(fmt: str, path: Path) -> Sink:
    """The sink writing ``fmt`` (a text format or parquet) to the file ``path``."""
    return ParquetSink(path) if fmt == "parquet" else OutputSink(fmt, path=path)


def _is_special(path: Path) -> bool:
    """An existing path that is neither a regular file nor a directory (a device, a FIFO)."""
    return path.exists() and not path.is_file() and not path.is_dir()


def _open_temporary(path: Path) -> TextIO:
    if path.is_dir():
        raise SinkError(f"{path} is a directory; give an output file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return temporary_path(path).open("w", encoding="utf-8", newline="")
    except OSError as exc:
        reason = "a parent is a file" if isinstance(exc, FileExistsError) else exc.strerror
        raise SinkError(f"cannot write {path}: {reason}") from exc


def _discard_further_output(stream: TextIO) -> None:
    """Point the stream's descriptor at /dev/null, so that later output to stdout (a summary
    line, the interpreter's final flush) does not raise BrokenPipeError again; this is the
    recipe in Python's ``signal`` documentation."""
    try:
        descriptor = stream.fileno()
    except (OSError, ValueError):  # not backed by a descriptor (io.StringIO, closed)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, descriptor)
    os.close(devnull)
