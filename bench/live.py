"""Benchmark the live daemon on a machine without a sound card, through a private PulseAudio
(tests/audio_servers.py) and the real PortAudio capture path.

(1) **Capture-to-detection latency**: ``birdd run --device pulse --format jsonl`` while
    XC563936 plays in real time. Each detection line is stamped (``time.time()``) when it
    reaches this process; its latency is that stamp minus the detection's ``end`` (UTC from
    the audio clock): how long after the audio ended the detection was out. Measured with
    events (the live default: an event is reported once a window without the species
    follows, so up to one hop later) and with ``--per-window`` (every window as soon as it is
    scored), both at ``--min-conf 0.3`` for more detections than the live 0.8 gives.
(2) **Idle CPU**: the daemon listening to silence at overlap 0 for ``--idle`` seconds, CPU
    time from /proc/PID/stat after a warm-up, as % of one core; and its RSS.

Prints a markdown table and rewrites the live section of docs/benchmarks.md.

    python bench/live.py [--idle 60]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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
from common import (
    ROOT,
    audio_dir,
    clean_env,
    host_lines,
    replace_section,
    section_text,
    step,
    verdict,
)

sys.path.insert(0, str(ROOT / "tests"))
from audio_servers import PulseServer

LIVE_START = "<!-- live:start (written by bench/live.py) -->"
LIVE_END = "<!-- live:end -->"
HOP_S = 3.0
TARGET_EXTRA_S = 0.150
TARGET_CPU_PERCENT = 5.0
WARM_UP_S = 10.0
LOW = ["--min-conf", "0.3"]
"""More detections to measure (0.8 live by default); the threshold does not change the path."""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class LatencyRun:
    label: str
    latencies_s: List[float] = field(default_factory=list)

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(np.array(self.latencies_s) * 1000, q))


def birdd(pulse: PulseServer, db: Path, *args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "birdd.daemon", "run", "--device", "pulse", "--db", str(db)]
    env = {**clean_env(), **pulse.variables}
    return subprocess.Popen(
        [*command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def wait_capturing(process: subprocess.Popen) -> None:
    assert process.stderr is not None
    for line in process.stderr:
        if "capturing 'pulse'" in line:
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return
    raise SystemExit(f"birdd run exited ({process.wait()}) before capturing")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    if process.wait(timeout=60) != 0:
        raise SystemExit(f"birdd run exited with status {process.returncode}")


def measure_latency(pulse: PulseServer, work: Path, label: str, args: Sequence[str]) -> LatencyRun:
    step(f"latency: {label}")
    run = LatencyRun(label)
    process = birdd(pulse, work / f"{label}.sqlite", "--format", "jsonl", *args)
    wait_capturing(process)

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            arrived = time.time()
            end = json.loads(line)["end"]
            run.latencies_s.append(
                arrived - datetime.fromisoformat(end[:-1] + "+00:00").timestamp()
            )

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(1.0)
    pulse.play(audio_dir() / "soundscapes" / "XC563936_soundscape.mp3").wait()
    time.sleep(HOP_S * 2)
    stop(process)
    reader.join(timeout=10)
    return run


@dataclass
class Idle:
    seconds: float
    cpu_percent: float
    rss_mb: float


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure_idle(pulse: PulseServer, work: Path, seconds: float) -> Idle:
    step(f"idle CPU: {seconds:g} s of silence after {WARM_UP_S:g} s warm-up")
    process = birdd(pulse, work / "idle.sqlite", "--format", "jsonl")
    wait_capturing(process)
    time.sleep(WARM_UP_S)
    cpu0, wall0 = proc_cpu_s(process.pid), time.monotonic()
    time.sleep(seconds)
    cpu1, wall1 = proc_cpu_s(process.pid), time.monotonic()
    rss = proc_rss_mb(process.pid)
    stop(process)
    return Idle(seconds, 100 * (cpu1 - cpu0) / (wall1 - wall0), rss)


def table(runs: List[LatencyRun], idle: Idle) -> List[str]:
    target_ms = (HOP_S + TARGET_EXTRA_S) * 1000
    lines = [
        "| measurement | detections | p50 | p95 | max | target | verdict |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for run in runs:
        p95 = run.percentile_ms(95)
        lines.append(
            f"| latency, {run.label} | {len(run.latencies_s)} | {run.percentile_ms(50):,.0f} ms "
            f"| {p95:,.0f} ms | {max(run.latencies_s) * 1000:,.0f} ms | p95 ≤ hop + 150 ms = "
            f"{target_ms:,.0f} ms | {verdict(p95 <= target_ms)} |"
        )
    lines.append(
        f"| idle CPU, overlap 0, {idle.seconds:g} s | – | {idle.cpu_percent:.2f}% of one core "
        f"| – | – | ≤ {TARGET_CPU_PERCENT:g}% | {verdict(idle.cpu_percent <= TARGET_CPU_PERCENT)} |"
    )
    lines.append(f"| idle RSS | – | {idle.rss_mb:,.0f} MB | – | – | – | – |")
    return lines


def section(runs: List[LatencyRun], idle: Idle) -> str:
    machine = [
        *host_lines(f", load average {os.getloadavg()[0]:.2f} at the end"),
        "- Audio: a private PulseAudio 16 null sink at 48 kHz (tests/audio_servers.py), "
        "captured through PortAudio's ALSA pulse plugin; BirdNET V2.4 on TFLite, 2 threads, "
        "batch 1 (the live defaults), overlap 0 (hop 3 s)",
    ]
    reading = (
        "Latency is measured from the end of the audio a detection covers (its `end`, from the "
        "audio clock) to the moment its JSON line reaches a reader. With `--per-window` a "
        "window is out as soon as it is scored, so the latency is PortAudio's buffering plus "
        "one engine call; with the default events a detection waits for the next window to "
        "show whether the species is still singing, up to one hop more. Idle CPU is the "
        "daemon listening to silence: one BirdNET call per 3 s window plus capture. Latency "
        "runs use `--min-conf 0.3` (more detections to measure; the threshold does not "
        "change the path)."
    )
    title = "## Live daemon: capture-to-detection latency and idle CPU (`bench/live.py`)"
    return section_text(LIVE_START, LIVE_END, title, machine, table(runs, idle), reading)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle measurement")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="birdd-bench-live-") as folder:
        work = Path(folder)
        with PulseServer(work / "pulse") as pulse:
            runs = [
                measure_latency(pulse, work, "events (the live default)", LOW),
                measure_latency(pulse, work, "--per-window", [*LOW, "--per-window"]),
            ]
            idle = measure_idle(pulse, work, args.idle)
    text = section(runs, idle)
    print(text)
    replace_section(LIVE_START, LIVE_END, text, "\n")


if __name__ == "__main__":
    main()
