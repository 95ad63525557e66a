"""The student models' audio front end: raw 48 kHz windows → log-mel, with no FFT.

Every step is a fixed matrix applied by a convolution, so the exported graph holds only Conv,
Mul, Add and Log, which TensorRT 8.2 (TX2), TFLite (Pi) and ONNX Runtime all run:

1. optional decimation (``decimate`` > 1): a windowed-sinc low-pass FIR as a strided
   convolution (48 → 24 kHz);
2. STFT: the real and imaginary DFT rows of the bins under the mel bank, the Hann window folded
   in, as one convolution with kernel ``n_fft`` and stride ``hop``;
3. power (Re² + Im²), the mel bank over the used bins as a 1×1 convolution, then
   ``log(x + floor)``.

Cost: the DFT as a matrix costs ``2K · n_fft`` multiply-adds per frame (K: the bins under the
mel bank, ``(fmax − fmin) · n_fft / rate``). The default computes it on the 48 kHz input
directly (``n_fft`` 320: the same 150 Hz bins, no aliasing, no low-pass) with a hop of 1.5
frames: ~13 M multiply-adds per 3 s window, BirdNET V2.4 ~480 M. Decimating first halves the
DFT's multiply-adds for the same bins, but the low-pass is a one-channel convolution, which ONNX
Runtime runs at a fraction of its speed on many channels: measured, it was two thirds of the
student's time (``decimate`` 2 stays available through the sidecar).

The matrices are computed here, once, in numpy; ``birdd.training`` builds its torch module from
them and the parameters travel in the sidecar's ``frontend`` field. ``log_mel`` is the same
computation in numpy, the reference the tests and the torch module are held to.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Tuple, Union

import numpy as np

FRONTEND_TYPE = "birdd.dft-mel/1"


@dataclass(frozen=True)
class FrontendParams:
    """What the front end computes; stored in the sidecar's ``frontend`` field."""

    sample_rate: int = 48000  # the input's rate: BirdNET's, so the pipeline needs no change
    decimate: int = 1  # the STFT runs at sample_rate / decimate, after a low-pass if > 1
    lowpass_taps: int = 33  # used only when decimating
    n_fft: int = 320  # 6.7 ms, 150 Hz bins: the shortest DFT whose bins fill 32 mel bands
    hop: int = 480  # 10 ms
    n_mels: int = 32
    fmin: float = 300.0
    fmax: float = 10000.0  # also the low-pass cut-off; below the decimated Nyquist
    log_floor: float = 1e-6

    @property
    def stft_rate(self) -> int:
        return self.sample_rate // self.decimate

    def to_json(self) -> Dict[str, Any]:
        return {"type": FRONTEND_TYPE, **asdict(self)}

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> FrontendParams:
        if data.get("type") != FRONTEND_TYPE:
            raise ValueError(f"front end {data.get('type')!r} is not {FRONTEND_TYPE}")
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


def hz_to_mel(hz: Union[float, np.ndarray]) -> np.ndarray:
    """Slaney's mel scale (librosa's default): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, linear)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * (200.0 / 3)
    log_part = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log_part, linear)


def mel_filterbank(rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """``float64[n_mels, n_fft // 2 + 1]``: triangles on Slaney's mel scale, each normalised to
    unit area (librosa.filters.mel with htk=False, norm='slaney'). A band that catches no
    DFT bin is refused: it would be a constant input, and it means too many bands."""
    bins = np.linspace(0.0, rate / 2.0, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - bins[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    empty = np.flatnonzero(weights.max(axis=1) <= 0)
    if len(empty):
        raise ValueError(
            f"mel bands {empty.tolist()} catch no DFT bin: use fewer bands or a longer n_fft"
        )
    return weights


def hann(length: int) -> np.ndarray:
    """The periodic Hann window (scipy's get_window('hann', n), as librosa uses)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / length)


def lowpass_taps(params: FrontendParams) -> np.ndarray:
    """``float64[taps]``: a Hamming-windowed sinc at ``fmax``, unit gain at DC."""
    n = np.arange(params.lowpass_taps) - (params.lowpass_taps - 1) / 2.0
    cutoff = params.fmax / params.sample_rate  # cycles per input sample
    taps = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hamming(params.lowpass_taps)
    return taps / taps.sum()


def bin_range(params: FrontendParams) -> Tuple[int, int]:
    """The DFT bins ``[first, last)`` the mel bank uses: the STFT computes only these."""
    mel = full_filterbank(params)
    used = np.flatnonzero(mel.max(axis=0) > 0)
    return int(used[0]), int(used[-1]) + 1


def full_filterbank(params: FrontendParams) -> np.ndarray:
    return mel_filterbank(params.stft_rate, params.n_fft, params.n_mels, params.fmin, params.fmax)


def dft_weights(params: FrontendParams) -> np.ndarray:
    """``float64[2K, n_fft]``: the cosine rows, then the (negated) sine rows, of the K used
    bins, the Hann window folded in: ``W @ frame`` is Re and Im of the windowed DFT."""
    first, last = bin_range(params)
    k = np.arange(first, last, dtype=np.float64)[:, None]
    n = np.arange(params.n_fft, dtype=np.float64)[None, :]
    phase = 2.0 * np.pi * ((k * n) % params.n_fft) / params.n_fft
    return np.concatenate([np.cos(phase), -np.sin(phase)]) * hann(params.n_fft)[None, :]


def mel_weights(params: FrontendParams) -> np.ndarray:
    """``float64[n_mels, K]``: the mel bank over the used bins. (Applied to power, not to the
    squared Re and Im rows with the bank repeated: that matrix is twice the size, and int8
    exports keep it in float.)"""
    first, last = bin_range(params)
    return full_filterbank(params)[:, first:last]


def decimated_length(params: FrontendParams, samples: int) -> int:
    """Samples the STFT sees (the low-pass is a valid convolution, no padding)."""
    if params.decimate == 1:
        return samples
    return (samples - params.lowpass_taps) // params.decimate + 1


def frame_count(params: FrontendParams, samples: int) -> int:
    """STFT frames of a window of ``samples`` input samples (no padding)."""
    return (decimated_length(params, samples) - params.n_fft) // params.hop + 1


def frontend_macs(params: FrontendParams, samples: int) -> int:
    """Multiply-adds of the front end on one window of ``samples`` input samples."""
    lowpass = decimated_length(params, samples) * params.lowpass_taps if params.decimate > 1 else 0
    rows = dft_weights(params).shape[0]
    frames = frame_count(params, samples)
    return (
        lowpass
        + frames * rows * params.n_fft
        + frames * rows  # squaring and adding
        + frames * params.n_mels * (rows // 2)
    )


def log_mel(audio: np.ndarray, params: FrontendParams) -> np.ndarray:
    """``float32[B, n_mels, frames]`` from ``audio [B, samples]``: the reference in numpy."""
    audio = np.atleast_2d(np.asarray(audio, dtype=np.float64))
    decimated = audio
    if params.decimate > 1:
        taps = lowpass_taps(params)  # symmetric: convolution and correlation agree
        low = np.stack([np.convolve(row, taps, mode="valid") for row in audio])
        decimated = low[:, :: params.decimate]
    frames = frame_count(params, audio.shape[1])
    index = np.arange(params.n_fft)[None, :] + params.hop * np.arange(frames)[:, None]
    spectra = np.einsum("kn,bfn->bkf", dft_weights(params), decimated[:, index])
    bins = spectra.shape[1] // 2
    power = spectra[:, :bins] ** 2 + spectra[:, bins:] ** 2
    mel = np.einsum("mk,bkf->bmf", mel_weights(params), power)
    return np.log(mel + params.log_floor).astype(np.float32)
