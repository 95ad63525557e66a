"""What the benchmark scripts share: paths, the test audio, the machine, subprocesses, the doc.

The scripts run as ``python bench/NAME.py``, so bench/ is on ``sys.path`` and they import this
module as ``common``.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import soundfile
import soxr

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
RATE = 48_000


# --------------------------------------------------------------------------- the test audio


def audio_dir() -> Path:
    return Path(os.environ.get("BIRDD_TEST_AUDIO", str(ROOT.parent / "shared" / "audio")))


def soundscapes() -> List[Path]:
    folder = audio_dir() / "soundscapes"
    files = sorted([*folder.glob("*.wav"), *folder.glob("*.mp3")])
    if not files:
        raise SystemExit(f"no soundscapes in {folder}: set BIRDD_TEST_AUDIO")
    return files


def decode_mono(path: Path) -> np.ndarray:
    """One recording as mono float32 at 48 kHz."""
    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1, dtype=np.float32)
    if rate != RATE:
        mono = soxr.resample(mono, rate, RATE).astype(np.float32)
    return mono


# --------------------------------------------------------------------------- the machine


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_gib(field: str = "MemTotal") -> float:
    """A field of /proc/meminfo (MemTotal, MemAvailable, ...) in GiB."""
    for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024**2
    return 0.0


def host_lines(cpu_note: str = "") -> List[str]:
    """The CPU and Python lines of a results section; ``cpu_note`` ends the CPU line."""
    return [
        f"- CPU: {cpu_model()}, {len(os.sched_getaffinity(0))} cores (nproc), "
        f"{memory_gib():.0f} GiB RAM{cpu_note}",
        f"- Python {platform.python_version()} on {platform.platform()}",
    ]


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


# --------------------------------------------------------------------------- subprocesses


def clean_env() -> Dict[str, str]:
    """This environment without BIRDD_CONFIG, so birdd uses its built-in defaults."""
    return {key: value for key, value in os.environ.items() if key != "BIRDD_CONFIG"}


def failed(command: Sequence[str], code: int, stderr: str) -> SystemExit:
    return SystemExit(f"{' '.join(command)} failed ({code}):\n{stderr[-2000:]}")


@dataclass
class Measured:
    code: int
    launched: float
    """``time.perf_counter()`` just before the launch."""
    wall_s: float
    peak_rss_mb: float
    cpu_s: float
    """User + system CPU time of the process."""
    stderr: str


def run_measured(
    command: Sequence[str],
    env: Optional[Dict[str, str]] = None,
    timeout_s: Optional[float] = None,
    check: bool = True,
) -> Measured:
    """Run ``command`` to the end (killed after ``timeout_s``); its wall time, and its own peak
    RSS and CPU time (from wait4). With ``check``, a non-zero exit raises SystemExit."""
    with tempfile.TemporaryFile("w+", encoding="utf-8") as errors:
        launched = time.perf_counter()
        process = subprocess.Popen(
            list(command), stdout=subprocess.DEVNULL, stderr=errors, env=env, cwd=ROOT
        )
        killer = threading.Timer(timeout_s, process.kill) if timeout_s is not None else None
        if killer is not None:
            killer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            if killer is not None:
                killer.cancel()
        wall_s = time.perf_counter() - launched
        process.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        stderr = errors.read()
    if check and process.returncode != 0:
        raise failed(command, process.returncode, stderr)
    return Measured(
        process.returncode,
        launched,
        wall_s,
        usage.ru_maxrss / 1024,
        usage.ru_utime + usage.ru_stime,
        stderr,
    )


# --------------------------------------------------------------------------- report


def step(label: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {label}", file=sys.stderr, flush=True)


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def section_text(
    start_marker: str,
    end_marker: str,
    title: str,
    machine: Sequence[str],
    table: Sequence[str],
    reading: str,
) -> str:
    """A results section between its markers: title, machine lines, table, reading."""
    lines = [start_marker, title, "", *machine, "", *table, "", reading, end_marker]
    return "\n".join(lines) + "\n"


def replace_section(start_marker: str, end_marker: str, section: str, head: str) -> None:
    """Replace the text from ``start_marker`` to ``end_marker`` in docs/benchmarks.md with
    ``section``; without the markers, append ``head`` and ``section`` (creating the file)."""
    text = DOC.read_text(encoding="utf-8") if DOC.is_file() else "# Benchmarks\n"
    if start_marker in text and end_marker in text:
        before, rest = text.split(start_marker, 1)
        tail = rest.split(end_marker, 1)[1].lstrip("\n")
        text = before + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n" + head + section
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text, encoding="utf-8")
    step(f"wrote {DOC.relative_to(ROOT)}")
