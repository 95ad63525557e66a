"""Helpers shared by the test modules (on sys.path through pytest's ``pythonpath``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import pytest
import soundfile
import soxr

REPO = Path(__file__).resolve().parent.parent
# Permissively licensed recordings that ship with the repository (sources and licences in
# tests/data/audio/README.md): the core tests run on these and on the demo recording.
RECORDINGS = REPO / "tests" / "data" / "audio"
# 30 s of a forest soundscape, 32 kHz mono (opensoundscape's test data, MIT): a Wood Thrush
# (Hylocichla mustelina) in every 3 s window (0.41 to 1.00) and six other species at 0.4.
THRUSH = "opensoundscape_1min_first30s.flac"
# The engine contract's windows: the thrush (10), a European Robin's 2.7 s call (1, 0.996) and a
# dawn in the Jura (4: a Common Chiffchaff at 3 s, 0.87), at 32, 44.1 and 22 kHz.
ENGINE_RECORDINGS = (
    THRUSH,
    "Erithacus_rubecula_robin.ogg",
    "maad_jura_S4A03895_20190522_060000.wav",
)
# How far two BirdNET front ends (the original's FFT, the rewrite's convolution, ONNX Runtime's)
# may differ in logits on those windows. Measured: at most 7e-5 on the thrush, but 2.2e-3 on
# the robin's zero-padded window and on the Jura dawn (22 kHz: nothing above 11 kHz), where
# near-empty mel bands magnify float32 rounding; 2.8e-4 on XC563936 and the tawny owl (48 kHz).
LOGIT_TOLERANCE = 3e-3
# The larger shared collection (non-commercial and GPL recordings among them), beside the
# checkout in CI; the tests that need it skip without it (the ``shared_audio`` fixture).
SHARED_AUDIO = Path(os.environ.get("BIRDD_TEST_AUDIO", REPO.parent / "shared" / "audio"))
SHARED_AUDIO_MISSING = (
    f"needs the shared recordings: {SHARED_AUDIO} not found "
    "(set BIRDD_TEST_AUDIO to the shared audio folder)"
)
WINDOW = 144000  # BirdNET's 3 s at 48 kHz
RATE = 48000


def recording(name: str) -> Path:
    """A recording in tests/data/audio (``name`` relative to it); it must be there."""
    path = RECORDINGS / name
    assert path.is_file(), f"{path} is missing from the repository"
    return path


def shared_audio_present() -> bool:
    return (SHARED_AUDIO / "soundscapes").is_dir()


def shared_recordings(folder: str) -> list:
    """Parameters for ``pytest.mark.parametrize``: each file name in ``SHARED_AUDIO/folder``,
    or, without the shared recordings, one parameter that skips with the reason (never an
    empty parametrisation, which pytest would report as a silent skip)."""
    if not shared_audio_present():
        return [
            pytest.param(
                None, id=f"{folder}-missing", marks=pytest.mark.skip(reason=SHARED_AUDIO_MISSING)
            )
        ]
    names = sorted(path.name for path in (SHARED_AUDIO / folder).iterdir() if path.is_file())
    assert names, f"{SHARED_AUDIO / folder} holds no recordings"
    return names


def read_mono(path: Path, rate: int = RATE) -> np.ndarray:
    """The recording's channels averaged, resampled to ``rate`` (soxr) when it has another."""
    audio, native = soundfile.read(str(path), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if native == rate:
        return mono
    return soxr.resample(mono, native, rate).astype(np.float32)


def model_windows(*paths: Path) -> np.ndarray:
    """3 s windows at 48 kHz from t = 0 of each recording, the last partial one zero-padded
    (as BirdNET-Analyzer cuts a file), the recordings one after the other."""
    chunks = []
    for path in paths:
        mono = read_mono(path)
        padded = np.zeros(-(-len(mono) // WINDOW) * WINDOW, np.float32)
        padded[: len(mono)] = mono
        chunks.append(padded.reshape(-1, WINDOW))
    return np.concatenate(chunks)


def write_48k(path: Path, target: Path, seconds: Optional[float] = None) -> Path:
    """The first ``seconds`` (all by default) of ``path`` as a 48 kHz mono float WAV at
    ``target``: what the sound servers play, compared with what comes out sample for sample."""
    samples = read_mono(path)
    if seconds is not None:
        samples = samples[: round(seconds * RATE)]
    soundfile.write(str(target), samples, RATE, subtype="FLOAT")
    return target


def birdd_command(*args: str) -> List[str]:
    """The command line that runs birdd with these arguments in a fresh process."""
    return [sys.executable, "-m", "birdd.daemon", *args]


def run_birdd(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run the installed command line exactly as a user would (a fresh process)."""
    return subprocess.run(
        birdd_command(*args), capture_output=True, text=True, timeout=timeout, **kwargs
    )


def simulate_args(recording: Path, db: Path, *flags: str) -> List[str]:
    """`--simulate RECORDING FLAGS… --per-window --format jsonl --db DB`: one JSON line per
    window and species on stdout."""
    per_window = ("--per-window", "--format", "jsonl", "--db", str(db))
    return ["--simulate", str(recording), *flags, *per_window]


def jsonl_rows(stdout: str) -> list:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def simulate_rows(
    recording: Path, db: Path, *flags: str
) -> Tuple[subprocess.CompletedProcess, list]:
    """Run ``simulate_args`` in a fresh process: the result and its detections as dicts."""
    result = run_birdd(*simulate_args(recording, db, *flags))
    return result, jsonl_rows(result.stdout)
