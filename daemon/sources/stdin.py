"""Audio on standard input: WAV (as ``arecord``, ``sox`` or ``ffmpeg`` write it to a pipe) or
raw PCM in the format ``audio.stdin`` gives.

A pipe cannot seek, so the WAV header is parsed here as it streams by; the data chunk's length
is trusted only when it is plausible (``arecord`` writes a placeholder when streaming). The
pipe itself holds the writer back, so nothing is dropped: this source is not paced.
"""

from __future__ import annotations

import os
import select
import struct
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Optional

import numpy as np

from birdd.daemon.sources.base import AudioSource, Block, NonFiniteSamples, SourceError

READ_TIMEOUT_S = 0.25
STREAMING_SIZES = (0, 0xFFFFFFFF, 0x7FFFFFFF)
"""Data-chunk lengths that mean "until the end of the stream"."""
WAVE_FORMAT_PCM, WAVE_FORMAT_FLOAT, WAVE_FORMAT_EXTENSIBLE = 1, 3, 0xFFFE


@dataclass(frozen=True)
class PcmFormat:
    sample_rate: int
    channels: int
    encoding: str
    """u8, s16le, s24le, s32le, f32le or f64le."""

    @property
    def sample_bytes(self) -> int:
        return {"u8": 1, "s16le": 2, "s24le": 3, "s32le": 4, "f32le": 4, "f64le": 8}[self.encoding]

    def decode(self, data: bytes) -> np.ndarray:
        """Whole frames of ``data`` as float32 ``[frames, channels]`` in [-1, 1)."""
        if self.encoding == "s24le":
            raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
            values = (raw[:, 0] | raw[:, 1] << 8 | raw[:, 2] << 16) << 8 >> 8
            samples = values.astype(np.float32) / 8388608.0
        elif self.encoding == "u8":
            samples = (np.frombuffer(data, np.uint8).astype(np.float32) - 128.0) / 128.0
        else:
            dtype, scale = {
                "s16le": ("<i2", 32768.0),
                "s32le": ("<i4", 2147483648.0),
                "f32le": ("<f4", 1.0),
                "f64le": ("<f8", 1.0),
            }[self.encoding]
            samples = np.frombuffer(data, dtype=dtype).astype(np.float32) / np.float32(scale)
        return samples.reshape(-1, self.channels)


def wav_encoding(tag: int, bits: int) -> str:
    if tag == WAVE_FORMAT_FLOAT and bits in (32, 64):
        return f"f{bits}le"
    if tag == WAVE_FORMAT_PCM and bits in (16, 24, 32):
        return f"s{bits}le"
    if tag == WAVE_FORMAT_PCM and bits == 8:
        return "u8"
    raise SourceError(
        f"stdin: WAV format {tag:#x} with {bits}-bit samples is not supported: send 16/24/32-bit "
        "PCM or 32-bit float"
    )


class StdinSource(AudioSource):
    """Reads WAV or raw PCM from a pipe until it ends; stoppable between reads."""

    def __init__(self, raw: PcmFormat, block_s: float, stream: BinaryIO) -> None:
        self.name = "stdin"
        self._stream = stream  # keeps the file (and so its descriptor) open
        self._fd = stream.fileno()
        self._stop = threading.Event()
        self._remaining: Optional[int] = None
        head = self._read_exactly(4, "the first bytes")
        if head == b"RIFF":
            self.format, self._pending = self._read_wav_header(), b""
        else:
            self.format, self._pending = raw, head
        self.sample_rate = self.format.sample_rate
        self.channels = self.format.channels
        frame = self.format.sample_bytes * self.channels
        self._block_bytes = max(1, int(block_s * self.sample_rate)) * frame
        self._frame_bytes = frame

    def stop(self) -> None:
        self._stop.set()

    def blocks(self) -> Iterator[Block]:
        first = True
        damaged = NonFiniteSamples(self.name, self.sample_rate)
        try:
            while not self._stop.is_set():
                data = self._read_some()
                if data is None:
                    continue
                if not data:
                    return
                samples = damaged.clean(self.format.decode(data))
                captured_at = time.time() - len(samples) / self.sample_rate if first else None
                first = False
                yield Block(samples, captured_at)
        finally:
            damaged.report()

    def _read_some(self) -> Optional[bytes]:
        """Whole frames (b"" at the end of the stream), or None when nothing came in time."""
        ready, _, _ = select.select([self._fd], [], [], READ_TIMEOUT_S)
        if not ready:
            return None
        want = self._block_bytes - len(self._pending)
        if self._remaining is not None:
            want = min(want, self._remaining)
        chunk = os.read(self._fd, want) if want > 0 else b""
        if self._remaining is not None:
            self._remaining -= len(chunk)
        data = self._pending + chunk
        if not chunk:
            return b""  # an incomplete last frame is dropped
        usable = len(data) - len(data) % self._frame_bytes
        self._pending = data[usable:]
        return data[:usable] if usable else None

    def _read_exactly(self, count: int, what: str) -> bytes:
        data = b""
        while len(data) < count:
            chunk = os.read(self._fd, count - len(data))
            if not chunk:
                raise SourceError(
                    f"stdin ended before {what}: pipe WAV or raw audio into `birdd run --input -`"
                )
            data += chunk
        return data

    def _read_wav_header(self) -> PcmFormat:
        riff = self._read_exactly(8, "the WAV header")
        if riff[4:] != b"WAVE":
            raise SourceError("stdin: a RIFF stream that is not WAVE audio: send WAV or raw PCM")
        fmt: Optional[PcmFormat] = None
        while True:
            chunk_id, size = struct.unpack("<4sI", self._read_exactly(8, "the WAV data"))
            if chunk_id == b"data":
                if fmt is None:
                    raise SourceError("stdin: WAV data before its format chunk")
                self._remaining = None if size in STREAMING_SIZES else size
                return fmt
            body = self._read_exactly(size + size % 2, f"the WAV {chunk_id!r} chunk")
            if chunk_id == b"fmt ":
                fmt = self._parse_fmt(body)

    @staticmethod
    def _parse_fmt(body: bytes) -> PcmFormat:
        tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
        if tag == WAVE_FORMAT_EXTENSIBLE and len(body) >= 26:
            tag = struct.unpack("<H", body[24:26])[0]
        if channels < 1 or rate < 1000:
            raise SourceError(f"stdin: WAV header says {channels} channel(s) at {rate} Hz")
        return PcmFormat(rate, channels, wav_encoding(tag, bits))
