"""A clip's spectrogram as a PNG, with numpy and zlib only (no plotting library in the hub).

Short-time Fourier transform (Hann window of 1024 samples, hop 256 at 48 kHz: 21 ms, 47 Hz),
0 to 12 kHz (where birds sing), in dB from the clip's loudest bin down 80 dB, time pooled to
at most ``MAX_WIDTH`` columns (the loudest of each group, so a short call never vanishes), low
frequencies at the bottom, a dark-to-yellow colour scale."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import soundfile

N_FFT = 1024
HOP = 256
TOP_HZ = 12_000
RANGE_DB = 80.0
MAX_WIDTH = 1200
# dark blue → purple → orange → yellow (points of the scale, RGB 0-255)
STOPS = np.array(
    [[12, 7, 40], [80, 18, 123], [182, 54, 121], [251, 136, 97], [252, 253, 191]], dtype=float
)


def spectrogram_png(clip: Path) -> bytes:
    """The PNG of ``clip`` (any file soundfile reads; channels averaged)."""
    audio, rate = soundfile.read(str(clip), dtype="float32", always_2d=True)
    return png(colour(decibels(audio.mean(axis=1), rate)))


def decibels(audio: np.ndarray, rate: int) -> np.ndarray:
    """Rows of frequency (lowest last), columns of time; 0 = loudest, -RANGE_DB = floor."""
    n_fft = max(256, int(N_FFT * rate / 48_000))
    hop = max(1, n_fft // 4)
    if audio.size < n_fft:
        audio = np.pad(audio, (0, n_fft - audio.size))
    frames = np.lib.stride_tricks.sliding_window_view(audio, n_fft)[::hop]
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)) ** 2
    bins = min(power.shape[1], int(TOP_HZ * n_fft / rate) + 1)
    power = power[:, :bins]
    group = -(-power.shape[0] // MAX_WIDTH)
    if group > 1:
        padded = np.pad(power, ((0, (-power.shape[0]) % group), (0, 0)))
        power = padded.reshape(-1, group, bins).max(axis=1)
    level = 10 * np.log10(np.maximum(power, 1e-12))
    level = np.maximum(level - level.max(), -RANGE_DB)
    return level.T[::-1]


def colour(level: np.ndarray) -> np.ndarray:
    """dB (0 … -RANGE_DB) as RGB bytes, shape (height, width, 3)."""
    position = (level + RANGE_DB) / RANGE_DB * (len(STOPS) - 1)
    low = np.clip(np.floor(position).astype(int), 0, len(STOPS) - 2)
    part = (position - low)[..., None]
    rgb = STOPS[low] * (1 - part) + STOPS[low + 1] * part
    return np.clip(rgb, 0, 255).astype(np.uint8)


def png(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of ``rgb`` (height, width, 3): no filter, one zlib stream."""
    height, width, _ = rgb.shape
    rows = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, -1)], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)),
            _chunk(b"IEND", b""),
        ]
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
