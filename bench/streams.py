"""Live capacity: how many real-time network streams one ``birdd run`` keeps up with.

For each N in ``--streams``, N endless WAV streams of the shared soundscapes, paced at real
time by a local HTTP server on 127.0.0.1 (tests/http_streams.py, in this process), go into ONE
``birdd run`` with BirdNET V2.4 (TFLite, the live defaults but ``--batch-size``) for
``--duration`` seconds. Measured:

- CPU of birdd and its children (the ffmpeg decoders, if any) from /proc, user and system, after
  ``--warm-up`` seconds, as cores; peak RSS of the process tree (sampled every second);
- audio overwritten in the ring buffers before analysis, windows dropped and the deepest
  window queue, from the ``…/stats`` messages (every 5 s, a real mosquitto);
- gaps (SQLite gaps table) and the audio received against N x the run's length;
- latency: each ``--per-window`` row's arrival on stdout minus its window's ``end`` (the
  audio clock), p50 / p95.

Writes a table to docs/benchmarks.md ("Live capacity") and docs/img/streams.png (CPU and RSS
against N; needs matplotlib, in the training extra). Every run stops by itself.

    python bench/streams.py --streams 25,50,100,250 --duration 600
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
from datetime import datetime
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
from common import ROOT, audio_dir, clean_env, host_lines, replace_section, section_text, step

sys.path.insert(0, str(ROOT / "tests"))
from broker import Mosquitto, Subscriber
from http_streams import StreamServer

START = "<!-- streams:start (written by bench/streams.py) -->"
END = "<!-- streams:end -->"
PNG = ROOT / "docs" / "img" / "streams.png"
RECORDINGS = ("opensoundscape_1min.wav", "monitoR_survey.wav", "tawnyowl.wav")
SAMPLE_S = 1.0
STATS_S = 5
WINDOW_S = 3.0
ENGINE_NAMES = {"tflite": "TFLite", "onnx": "ONNX Runtime"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass
class Tree:
    """CPU seconds and RSS of a process and its living descendants (and the reaped ones'
    CPU, which the kernel adds to the parent's cutime/cstime)."""

    user_s: float
    system_s: float
    pss_mb: float
    root_rss_mb: float
    processes: int


def _stat(pid: int) -> Optional[List[str]]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _pss_mb(pid: int) -> float:
    """Proportional set size: shared pages (ffmpeg's libraries) split among their users, so
    the tree's sum is its real share of memory (summed RSS counts each library N times)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def _children(pid: int) -> List[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(child) for child in task.read_text().split()]
        except FileNotFoundError:
            continue
    return found


def tree(root: int) -> Tree:
    user = system = pss = root_rss = 0.0
    count = 0
    pending = [root]
    while pending:
        pid = pending.pop()
        fields = _stat(pid)
        if fields is None:
            continue
        count += 1
        user += int(fields[11]) + (int(fields[13]) if pid == root else 0)
        system += int(fields[12]) + (int(fields[14]) if pid == root else 0)
        pss += _pss_mb(pid)
        if pid == root:
            root_rss = int(fields[21]) * PAGE_KB / 1024
        pending += _children(pid)
    return Tree(user / CLOCK_TICKS, system / CLOCK_TICKS, pss, root_rss, count)


@dataclass
class Result:
    decoder: str
    streams: int
    duration_s: float
    cpu_cores: float = 0.0
    system_share: float = 0.0
    peak_pss_mb: float = 0.0
    peak_birdd_rss_mb: float = 0.0
    peak_processes: int = 0
    audio_share: float = 0.0
    gaps: int = 0
    gap_s: float = 0.0
    overwritten_s: float = 0.0
    windows_dropped: int = 0
    max_queue: int = 0
    latencies_s: List[float] = field(default_factory=list)
    load: float = 0.0

    def latency_ms(self, q: float) -> Optional[float]:
        if not self.latencies_s:
            return None
        return float(np.percentile(np.array(self.latencies_s) * 1000, q))


def birdd_command(urls: Sequence[str], db: Path, config: Path, args: argparse.Namespace) -> list:
    inputs = [part for url in urls for part in ("--input", url)]
    return [
        *(sys.executable, "-m", "birdd.daemon", "run", "--config", str(config)),
        *("--db", str(db), "--duration", str(args.duration), "--batch-size", str(args.batch)),
        *("--format", "jsonl", "--per-window", *inputs),
    ]


def read_rows(process: subprocess.Popen, result: Result) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        arrived = time.time()
        end = json.loads(line)["end"]
        result.latencies_s.append(arrived - datetime.fromisoformat(end[:-1] + "+00:00").timestamp())


def sample(process: subprocess.Popen, result: Result, warm_up_s: float) -> None:
    """Peak RSS every second; CPU from the end of the warm-up to the last sample."""
    began = time.monotonic()
    first: Optional[Tree] = None
    first_at = last_at = 0.0
    last: Optional[Tree] = None
    while process.poll() is None:
        now = tree(process.pid)
        at = time.monotonic()
        result.peak_pss_mb = max(result.peak_pss_mb, now.pss_mb)
        result.peak_birdd_rss_mb = max(result.peak_birdd_rss_mb, now.root_rss_mb)
        result.peak_processes = max(result.peak_processes, now.processes)
        if first is None and at - began >= warm_up_s:
            first, first_at = now, at
        elif first is not None and now.processes:
            last, last_at = now, at
        time.sleep(SAMPLE_S)
    if first is not None and last is not None and last_at > first_at:
        used = (last.user_s + last.system_s) - (first.user_s + first.system_s)
        result.cpu_cores = used / (last_at - first_at)
        result.system_share = (last.system_s - first.system_s) / used if used else 0.0


def read_stats(subscriber: Subscriber, result: Result, rate: int) -> None:
    for message in subscriber.messages:
        stats = json.loads(message.payload)
        result.max_queue = max(result.max_queue, stats["queue_depths"]["windows"])
        result.windows_dropped = max(result.windows_dropped, stats["dropped"]["windows"])
        overwritten = stats["dropped"]["overwritten_samples"] / rate
        result.overwritten_s = max(result.overwritten_s, overwritten)


def read_db(db: Path, result: Result) -> None:
    conn = sqlite3.connect(str(db))
    result.gaps, gap_s = conn.execute("SELECT count(*), total(seconds) FROM gaps").fetchone()
    result.gap_s = float(gap_s)
    conn.close()


def measure(
    decoder: str, count: int, work: Path, broker: Mosquitto, args: argparse.Namespace
) -> Result:
    step(f"{count} streams through {decoder} for {args.duration:g} s")
    result = Result(decoder, count, args.duration)
    db, config = work / f"{decoder}{count}.sqlite", work / f"{decoder}{count}.yaml"
    config.write_text(
        f"audio:\n  ring_buffer_s: {args.ring_buffer_s}\n  decoder: {decoder}\n"
        f"  block_s: {args.block_s}\n"
        f"engine:\n  type: {args.engine}\n"
        f"mqtt:\n  enabled: true\n  host: 127.0.0.1\n  port: {broker.port}\n"
        f"  topic_prefix: bench\n  stats_interval_s: {STATS_S}\n"
    )
    recordings = [audio_dir() / "soundscapes" / name for name in RECORDINGS]
    with StreamServer(recordings) as server, Subscriber(broker, "bench/stats", qos=0) as stats:
        urls = [server.url(index) for index in range(count)]
        process = subprocess.Popen(
            birdd_command(urls, db, config, args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )
        reader = threading.Thread(target=read_rows, args=(process, result), daemon=True)
        reader.start()
        errors: List[str] = []
        talker = threading.Thread(target=lambda: errors.extend(process.stderr), daemon=True)
        talker.start()
        sample(process, result, args.warm_up)
        process.wait(timeout=120)
        reader.join(timeout=10)
        talker.join(timeout=10)
        time.sleep(0.5)  # the stats message of the clean stop
        read_stats(stats, result, 48_000)
    if process.returncode != 0:
        raise SystemExit(f"birdd run exited {process.returncode}:\n{''.join(errors[-20:])}")
    read_db(db, result)
    result.audio_share = delivered_share(errors, count, args.duration)
    result.load = os.getloadavg()[0]
    return result


def delivered_share(stderr: List[str], count: int, duration_s: float) -> float:
    """Audio received (the run's last line: 'complete: X s of audio …') over N x duration."""
    for line in reversed(stderr):
        found = re.search(r"([\d,.]+) s of audio in", line)
        if found:
            return float(found.group(1).replace(",", "")) / (count * duration_s)
    return 0.0


def table(results: List[Result]) -> List[str]:
    lines = [
        "| decoder | streams | CPU (cores) | of it system | peak PSS, birdd + children "
        "| peak RSS, birdd | processes "
        "| audio received | gaps | overwritten | windows dropped | deepest window queue "
        "| latency p50 / p95 | load average after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        p50, p95 = r.latency_ms(50), r.latency_ms(95)
        latency = "–" if p50 is None else f"{p50:,.0f} / {p95:,.0f} ms"
        lines.append(
            f"| {r.decoder} | {r.streams} | {r.cpu_cores:.2f} | {100 * r.system_share:.0f}% "
            f"| {r.peak_pss_mb:,.0f} MB | {r.peak_birdd_rss_mb:,.0f} MB | {r.peak_processes} "
            f"| {100 * r.audio_share:.1f}% "
            f"| {r.gaps} ({r.gap_s:.1f} s) | {r.overwritten_s:,.1f} s | {r.windows_dropped} "
            f"| {r.max_queue} | {latency} | {r.load:.1f} |"
        )
    return lines


def plot(results: List[Result]) -> Optional[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        step("no PNG: matplotlib is missing (pip install -e '.[training]')")
        return None
    figure, (cpu, memory) = plt.subplots(1, 2, figsize=(9, 3.5))
    for decoder in dict.fromkeys(r.decoder for r in results):
        mine = [r for r in results if r.decoder == decoder]
        counts = [r.streams for r in mine]
        cpu.plot(counts, [r.cpu_cores for r in mine], "o-", label=decoder)
        memory.plot(counts, [r.peak_pss_mb for r in mine], "s-", label=decoder)
    cpu.set_ylabel("CPU, birdd + children (cores)")
    memory.set_ylabel("peak PSS, birdd + children (MB)")
    for axes in (cpu, memory):
        axes.set_xlabel("real-time streams into one birdd run")
        axes.legend()
        axes.grid(alpha=0.3)
    figure.tight_layout()
    PNG.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(PNG, dpi=100)
    step(f"wrote {PNG.relative_to(ROOT)}")
    return PNG


def section(results: List[Result], args: argparse.Namespace) -> str:
    machine = [
        *host_lines(" (shared with other work: see the load average of each run)"),
        f"- Streams: endless 16-bit WAV of {', '.join(RECORDINGS)} (looped, 32 kHz), paced at "
        "real time by an HTTP server on 127.0.0.1 in the bench process (tests/http_streams.py), "
        "decoded by one ffmpeg process per stream or in birdd (`audio.decoder: pyav`: these "
        "plain HTTP WAV streams through its one stream reader thread); "
        f"BirdNET V2.4 on {ENGINE_NAMES[args.engine]}, 2 threads, batch {args.batch}, overlap 0, "
        f"`audio.ring_buffer_s: {args.ring_buffer_s:g}`, `audio.block_s: {args.block_s:g}`, "
        f"`--per-window`; {args.duration:g} s per N, CPU after {args.warm_up:g} s",
    ]
    reading = (
        "CPU is birdd's and its ffmpeg children's (user + system, /proc), as cores; memory the "
        "process tree's proportional set size (PSS: libraries shared by the ffmpeg processes "
        "split among them) at its peak, and birdd's own RSS. Audio received is the audio "
        "seconds the inputs delivered over N x the run's length (each stream's start-up is "
        "missing; the server sends 0.5 s at once on connecting, so it can pass 100%); audio "
        "received and then overwritten in a ring buffer, or whose window was "
        "dropped, was not analysed. Overwritten, dropped windows and the window queue come from"
        " the `…/stats` messages (every 5 s); latency from each row's arrival on stdout minus "
        "its window's end by the audio clock (the engine queue plus one call, and ffmpeg's "
        "buffering). Each ffmpeg holds ~10 MB of its own (anonymous) memory; birdd's ring "
        "buffers hold a live input at 48 kHz in 16 bits, 96 kB per second of buffer per stream "
        "(the default 120 s would be 11.5 MB per stream)."
    )
    if PNG.is_file():
        reading += f"\n\n![CPU and RSS against streams]({PNG.relative_to(ROOT / 'docs')})"
    title = "## Live capacity: real-time streams into one `birdd run` (`bench/streams.py`)"
    return section_text(START, END, title, machine, table(results), reading)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="25,50,100,150,200,250", help="N to measure")
    parser.add_argument("--decoders", default="ffmpeg,pyav", help="audio.decoder values")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds per N")
    parser.add_argument("--warm-up", type=float, default=30.0, help="seconds before CPU counts")
    parser.add_argument("--batch", type=int, default=8, help="engine batch size")
    parser.add_argument("--ring-buffer-s", type=float, default=10.0, help="audio.ring_buffer_s")
    parser.add_argument("--block-s", type=float, default=0.5, help="audio.block_s")
    parser.add_argument("--engine", choices=sorted(ENGINE_NAMES), default="tflite")
    parser.add_argument("--no-write", action="store_true", help="print; leave docs/ alone")
    args = parser.parse_args(argv)
    try:
        args.counts = [int(part) for part in args.streams.split(",")]
    except ValueError:
        parser.error(f"--streams {args.streams}: give counts like 25,50,100")
    if args.warm_up >= args.duration - 2 * SAMPLE_S:
        parser.error(f"--warm-up {args.warm_up:g} leaves no time in --duration {args.duration:g}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    results: List[Result] = []
    with tempfile.TemporaryDirectory(prefix="birdd-bench-streams-") as folder:
        work = Path(folder)
        broker = Mosquitto(work / "broker").start()
        try:
            for decoder in args.decoders.split(","):
                for count in args.counts:
                    results.append(measure(decoder, count, work, broker, args))
                    print("\n".join(table(results)[-1:]), flush=True)
        finally:
            broker.stop()
    if args.no_write:
        print("\n".join(table(results)))
        return
    plot(results)
    text = section(results, args)
    print(text)
    replace_section(START, END, text, "\n")


if __name__ == "__main__":
    main()
