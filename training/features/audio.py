"""Recordings → model windows, cut exactly as birdd's pipeline cuts a file at inference.

The daemon mixes the channels to mono, resamples with soxr to the model's rate and cuts windows
at k · hop from the first sample, zero-padding the last; a tail shorter than 1 s is dropped
unless it is the only window (daemon/pipeline/windower.py). Training uses the same rule, and
feeds the same raw windows to the same engine: there is no other preprocessing (no embedding
normalisation outside the model), so what the head learns on is what it sees at inference.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import soundfile

from birdd.training.datasets.records import Recording

MIN_TAIL_S = 1.0


class AudioError(Exception):
    """A recording that cannot be decoded (skipped and listed, never fatal)."""


def read_mono(path: str, rate: int) -> np.ndarray:
    """The whole recording, channels averaged, at ``rate`` (soxr's default quality, as the
    daemon's streaming resampler)."""
    try:
        audio, native = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(f"cannot decode {path}: {exc}") from None
    if audio.shape[0] == 0:
        raise AudioError(f"{path} holds no audio")
    mono = audio[:, 0] if audio.shape[1] == 1 else audio.mean(axis=1, dtype=np.float32)
    if native != rate:
        import soxr

        mono = soxr.resample(mono, native, rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


def cut_windows(audio: np.ndarray, window: int, hop: int, rate: int) -> np.ndarray:
    """``float32[n, window]``: windows at k · hop, the last zero-padded, a tail under 1 s
    dropped unless it is the only window."""
    min_tail = min(window, int(MIN_TAIL_S * rate))
    windows = []
    start = 0
    while start < len(audio):
        chunk = audio[start : start + window]
        if windows and len(chunk) < min_tail:
            break
        padded = np.zeros(window, dtype=np.float32)
        padded[: len(chunk)] = chunk
        windows.append(padded)
        start += hop
    if not windows:
        return np.zeros((0, window), dtype=np.float32)
    return np.stack(windows)


def segment_audio(audio: np.ndarray, recording: Recording, window: int, rate: int) -> np.ndarray:
    """The part of ``audio`` a segment covers; a segment shorter than a window is widened to
    one window centred on it (within the recording)."""
    if recording.start_s is None:
        return audio
    end_s = recording.end_s if recording.end_s is not None else len(audio) / rate
    start, end = int(recording.start_s * rate), int(end_s * rate)
    if end - start < window:
        centre = (start + end) // 2
        start = max(0, min(centre - window // 2, len(audio) - window))
        end = start + window
    return audio[start:end]


def recording_windows(
    recording: Recording, rate: int, window: int, hop: int, audio: Optional[np.ndarray] = None
) -> np.ndarray:
    """The model windows of one recording or segment."""
    if audio is None:
        audio = read_mono(str(recording.path), rate)
    return cut_windows(segment_audio(audio, recording, window, rate), window, hop, rate)
