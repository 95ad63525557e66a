"""Waveform augmentation for the student recipes, run on CPU in the DataLoader workers.

Each part is switchable (a probability of 0 turns it off). They act on a raw window before the
model's own front end: gain, white noise at a target SNR, a negative (urban noise) mixed in as
background at a target SNR, time masking (a span set to zero) and frequency masking (a band
removed through the window's spectrum). Time shift is the chunk's random offset (the dataset);
mixup mixes whole examples in the batch (the recipe).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class AugmentOptions:
    gain_db: float = 6.0  # uniform in ±gain_db
    noise_p: float = 0.3
    noise_snr_db: tuple = (10.0, 30.0)
    background_p: float = 0.3
    background_snr_db: tuple = (0.0, 15.0)
    time_mask_p: float = 0.3
    time_mask_max_s: float = 0.3
    freq_mask_p: float = 0.3
    freq_mask_max_hz: float = 1500.0
    shift_s: float = 0.5  # a chunk starts up to this far from the teacher's window
    mixup_alpha: float = 0.4  # 0 turns mixup off

    @classmethod
    def off(cls) -> AugmentOptions:
        return cls(0.0, 0.0, (0, 0), 0.0, (0, 0), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def _power(x: np.ndarray) -> float:
    return float(np.mean(x.astype(np.float64) ** 2)) + 1e-12


def add_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``signal`` plus ``noise`` scaled so that their power ratio is ``snr_db``."""
    scale = np.sqrt(_power(signal) / (_power(noise) * 10 ** (snr_db / 10)))
    return signal + (noise * scale).astype(np.float32)


def mask_band(window: np.ndarray, rate: int, low_hz: float, high_hz: float) -> np.ndarray:
    spectrum = np.fft.rfft(window)
    freqs = np.fft.rfftfreq(len(window), 1.0 / rate)
    spectrum[(freqs >= low_hz) & (freqs < high_hz)] = 0
    return np.fft.irfft(spectrum, len(window)).astype(np.float32)


def augment(
    window: np.ndarray,
    rate: int,
    options: AugmentOptions,
    rng: np.random.Generator,
    background: Optional[np.ndarray] = None,
) -> np.ndarray:
    """An augmented copy of one raw window (``background``: a negative's window, or None)."""
    x = window.astype(np.float32, copy=True)
    if background is not None and rng.random() < options.background_p:
        x = add_at_snr(x, background, rng.uniform(*options.background_snr_db))
    if rng.random() < options.noise_p:
        noise = rng.standard_normal(len(x)).astype(np.float32)
        x = add_at_snr(x, noise, rng.uniform(*options.noise_snr_db))
    if rng.random() < options.freq_mask_p:
        low = rng.uniform(0, rate / 2 - options.freq_mask_max_hz)
        x = mask_band(x, rate, low, low + rng.uniform(0, options.freq_mask_max_hz))
    if rng.random() < options.time_mask_p:
        span = int(rng.uniform(0, options.time_mask_max_s) * rate)
        start = int(rng.integers(0, max(1, len(x) - span)))
        x[start : start + span] = 0
    if options.gain_db:
        x *= np.float32(10 ** (rng.uniform(-options.gain_db, options.gain_db) / 20))
    return x
