"""The bytes of an HTTP audio stream as float32 frames at the model's rate, pushed piece by
piece as they arrive (the stream reader cannot wait for more, as a demuxer would).

WAV is parsed here: its head (RIFF chunks up to ``data``, whose size a live stream leaves
unknown) and then plain PCM. MP3 and AAC (ADTS) go through PyAV's codec parser and decoder.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Tuple

import numpy as np

from birdd.daemon.sources.base import Resampler, SourceError

MAX_WAV_HEAD = 65536
EXTENSIBLE = 0xFFFE
PCM, FLOAT = 1, 3
SAMPLE_TYPES = {(PCM, 8): "u1", (PCM, 16): "<i2", (PCM, 32): "<i4", (FLOAT, 32): "<f4"}
SAMPLE_TYPES[(FLOAT, 64)] = "<f8"
"""The WAV sample formats read (24-bit PCM is converted on its own)."""


class StreamBody(Protocol):
    kind: str
    rate: int
    """The rate of the frames ``decode`` returns (the model's)."""

    def decode(self, data: bytes) -> np.ndarray:
        """The frames ([frames, channels] float32, maybe none) that ``data`` completes."""


@dataclass(frozen=True)
class WavFormat:
    tag: int
    channels: int
    rate: int
    bits: int

    @property
    def frame_bytes(self) -> int:
        return self.channels * self.bits // 8

    def samples(self, data: bytes) -> np.ndarray:
        """Whole frames of ``data`` as float32 [frames, channels] in [-1, 1]."""
        if self.bits == 24:
            raw = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.int32)
            values = (raw[:, 0] << 8 | raw[:, 1] << 16 | raw[:, 2] << 24) >> 8
            flat = values.astype(np.float32) / 8388608.0
        else:
            values = np.frombuffer(data, SAMPLE_TYPES[(self.tag, self.bits)])
            if self.tag == FLOAT:
                flat = values.astype(np.float32)
            elif self.bits == 8:
                flat = (values.astype(np.float32) - 128.0) / 128.0
            else:
                flat = values.astype(np.float32) / float(2 ** (self.bits - 1))
        return flat.reshape(-1, self.channels)


def _fmt_chunk(chunk: bytes) -> WavFormat:
    if len(chunk) < 16:
        raise SourceError("not a WAV stream: its fmt chunk is too short")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", chunk[:16])
    if tag == EXTENSIBLE and len(chunk) >= 26:
        tag = struct.unpack("<H", chunk[24:26])[0]
    readable = (bits == 24 and tag == PCM) or (tag, bits) in SAMPLE_TYPES
    if not readable or channels < 1 or rate < 1:
        raise SourceError(
            f"a WAV stream of format {tag}, {bits} bits, {channels} channel(s) is not read "
            "here (8-32 bit PCM or float): use audio.decoder ffmpeg"
        )
    return WavFormat(tag, channels, rate, bits)


def parse_wav_head(data: bytes) -> Optional[Tuple[WavFormat, int]]:
    """The format and where the samples begin, or None until the head is complete."""
    if len(data) >= 12 and (data[:4] != b"RIFF" or data[8:12] != b"WAVE"):
        raise SourceError("not a WAV stream (no RIFF/WAVE head)")
    position, found = 12, None
    while position + 8 <= len(data):
        name, size = (
            data[position : position + 4],
            struct.unpack("<I", data[position + 4 : position + 8])[0],
        )
        if name == b"data":
            if found is None:
                raise SourceError("not a WAV stream: samples before the fmt chunk")
            return found, position + 8
        end = position + 8 + size
        if end > MAX_WAV_HEAD:
            raise SourceError(f"not a WAV stream: no samples in its first {MAX_WAV_HEAD} bytes")
        if end > len(data):
            return None
        if name == b"fmt ":
            found = _fmt_chunk(data[position + 8 : end])
        position = end + (size & 1)
    if len(data) > MAX_WAV_HEAD:
        raise SourceError(f"not a WAV stream: no samples in its first {MAX_WAV_HEAD} bytes")
    return None


def with_channels(frames: np.ndarray, channels: int) -> np.ndarray:
    """Mix down to mono, copy mono to both sides, or keep the first two channels."""
    if frames.shape[1] == channels:
        return frames
    if channels == 1:
        return frames.mean(axis=1, keepdims=True, dtype=np.float32)
    if frames.shape[1] == 1:
        return np.repeat(frames, channels, axis=1)
    return frames[:, :channels]


class WavBody:
    """A live WAV stream: the head once, then PCM frames, resampled to ``rate``."""

    kind = "wav"

    def __init__(self, channels: int, rate: int) -> None:
        self.channels, self.rate = channels, rate
        self._head = b""
        self._format: Optional[WavFormat] = None
        self._partial = b""
        self._resample = Resampler(rate, rate)  # replaced once the head gives the rate

    def decode(self, data: bytes) -> np.ndarray:
        if self._format is None:
            self._head += data
            parsed = parse_wav_head(self._head)
            if parsed is None:
                return np.zeros((0, self.channels), np.float32)
            self._format, start = parsed
            data, self._head = self._head[start:], b""
            self._resample = Resampler(self._format.rate, self.rate, self.channels)
        data = self._partial + data if self._partial else data
        usable = len(data) - len(data) % self._format.frame_bytes
        self._partial = data[usable:]
        return self._resample(with_channels(self._format.samples(data[:usable]), self.channels))


class CodedBody:
    """An MP3 or AAC (ADTS) stream through PyAV's parser, decoder and resampler."""

    def __init__(self, kind: str, channels: int, rate: int) -> None:
        import av

        self.kind, self.channels, self.rate = kind, channels, rate
        self._codec: Any = av.CodecContext.create(kind, "r")  # an audio codec: decode()
        layout = "mono" if channels == 1 else "stereo"
        self._resampler = av.AudioResampler(format="flt", layout=layout, rate=rate)
        self._invalid = av.error.InvalidDataError

    def decode(self, data: bytes) -> np.ndarray:
        pieces = []
        for packet in self._codec.parse(data):
            try:
                frames = self._codec.decode(packet)
            except self._invalid:  # a tag (ID3) or a damaged frame: the decoder finds the next
                continue
            for frame in frames:
                for out in self._resampler.resample(frame):
                    pieces.append(out.to_ndarray().reshape(-1, self.channels))
        if not pieces:
            return np.zeros((0, self.channels), np.float32)
        return np.concatenate(pieces)
