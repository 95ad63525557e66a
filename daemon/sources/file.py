"""Audio files streamed block by block through libsndfile (wav, flac, ogg/opus, mp3)."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import soundfile

from birdd.daemon.sources.base import AudioSource, Block, NonFiniteSamples, SourceError

log = logging.getLogger(__name__)


def open_sound_file(path: Path, data: Optional[bytes] = None) -> soundfile.SoundFile:
    """Open ``path`` or raise SourceError with one line saying what is wrong with it.

    With ``data``, the file's bytes are decoded from memory instead (``path`` names them):
    ``birdd analyze --ray`` ships each file's bytes to a worker on another machine."""
    if data is None:
        if not path.exists():
            raise SourceError(f"audio file {path} not found: check the path")
        if path.is_dir():
            raise SourceError(f"{path} is a directory: give one audio file")
    if (len(data) if data is not None else path.stat().st_size) == 0:
        raise SourceError(f"audio file {path} is empty (0 bytes)")
    try:
        return soundfile.SoundFile(str(path) if data is None else io.BytesIO(data))
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        reason = str(exc).split(":")[-1].strip() or "unknown format"
        raise SourceError(
            f"cannot decode {path} ({reason}): give a wav, flac, ogg/opus or mp3 recording"
        ) from exc


class FileSource(AudioSource):
    """Streams a file in blocks of ``block_s`` seconds; memory stays flat in file length
    (with ``data``, the file's bytes decoded from memory, the whole file is in memory)."""

    def __init__(self, path: Path, block_s: float, data: Optional[bytes] = None) -> None:
        self.path = path
        self.name = str(path)
        self._file = open_sound_file(path, data)
        self.sample_rate = self._file.samplerate
        self.channels = self._file.channels
        self._block_frames = max(1, int(block_s * self.sample_rate))

    @property
    def duration_s(self) -> float:
        """The length libsndfile reports (for mp3 an estimate until decoded)."""
        return self._file.frames / self.sample_rate

    def blocks(self) -> Iterator[Block]:
        buffer = np.empty((self._block_frames, self.channels), dtype=np.float32)
        damaged = NonFiniteSamples(self.name, self.sample_rate)
        try:
            while True:
                try:
                    frames = self._file.read(out=buffer)
                except (soundfile.LibsndfileError, RuntimeError) as exc:
                    log.warning("stopped decoding %s early: %s; kept what was read", self.path, exc)
                    return
                if len(frames) == 0:
                    return
                yield Block(damaged.clean(frames))
        finally:
            damaged.report()

    def close(self) -> None:
        self._file.close()
