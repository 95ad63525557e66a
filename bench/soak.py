"""Soak: ``birdd run`` left running on endless real recordings, MQTT and clips on, the broker
restarted every few minutes and the hub ingesting, to show that nothing grows and nothing is
lost (issue #14's acceptance).

- Audio: ``--streams`` endless WAV streams of the shared soundscapes served over HTTP at real
  time (tests/http_streams.py, as a networked microphone would send them), into ONE ``birdd
  run`` with BirdNET, events at ``--min-conf`` (more detections than the live 0.8 gives).
- MQTT: a real mosquitto (tests/broker.py) restarted (SIGTERM, start) every ``--restart-every``
  seconds; ``birdd hub serve`` ingests into PostgreSQL 15 (tests/postgres.py, fsync on) with a
  durable session, so a restart is an outage both sides must ride out.
- Every ``SAMPLE_S``: RSS of the birdd process, PSS of its tree (ffmpeg decoders included),
  open file descriptors and threads, from /proc.
- Clips: each detection's FLAC clip, uploaded to the hub's ``PUT /api/clips`` (the station's
  clip outbox rides out the hub's broker-side outages too: the upload is HTTP, direct).
- At the end (SIGTERM, drain): every detection row in the station's SQLite is in the hub
  (by id), every kept clip is in the hub's ``clips`` table, both outboxes are empty, every
  clip still exists on the station's disk.

Prints a table, writes docs/img/soak.png and rewrites the soak section of docs/benchmarks.md.

    python bench/soak.py [--minutes 30] [--restart-every 300] [--streams 4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Set, Tuple

import numpy as np
from common import ROOT, audio_dir, clean_env, host_lines, replace_section, section_text, step
from streams import RECORDINGS, tree

sys.path.insert(0, str(ROOT / "tests"))
from broker import Mosquitto, free_port
from http_streams import StreamServer
from postgres import PASSWORD, Postgres, make_template

START = "<!-- soak:start (written by bench/soak.py) -->"
END = "<!-- soak:end -->"
PNG = ROOT / "docs" / "img" / "soak.png"
SAMPLE_S = 10.0
WARM_UP_S = 300.0
"""Flatness is judged from here on: the model, the rings, the first clips and the caches are
in place (the 30-minute soak of 2026-12-07 still grew until minute 3)."""
STATION = "soak"
HUB_ID = "soak-hub"
TOKEN = "soak-station-clip-token"
DRAIN_S = 120.0


@dataclass
class Sample:
    at_s: float
    rss_mb: float
    pss_mb: float
    fds: int
    threads: int


@dataclass
class Soak:
    minutes: float
    streams: int
    restarts: int = 0
    samples: List[Sample] = field(default_factory=list)
    station_rows: int = 0
    hub_rows: int = 0
    missing_at_hub: int = 0
    outbox_left: int = 0
    clips: int = 0
    clips_missing: int = 0
    clip_outbox_left: int = 0
    hub_clips: int = 0
    clips_missing_at_hub: int = 0
    gaps: int = 0
    exit_code: Optional[int] = None
    load: str = ""


def fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        return 0


def threads(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def sample_until(process: subprocess.Popen, soak: Soak, stop: threading.Event) -> None:
    began = time.monotonic()
    while not stop.is_set() and process.poll() is None:
        now = tree(process.pid)
        soak.samples.append(
            Sample(
                time.monotonic() - began,
                now.root_rss_mb,
                now.pss_mb,
                fds(process.pid),
                threads(process.pid),
            )
        )
        stop.wait(SAMPLE_S)


def restart_broker(broker: Mosquitto, soak: Soak, every_s: float, stop: threading.Event) -> None:
    while not stop.wait(every_s):
        broker.restart()
        soak.restarts += 1
        step(f"broker restarted ({soak.restarts})")


def station_config(
    path: Path, broker: Mosquitto, clips: Path, hub_url: str, args: argparse.Namespace
) -> None:
    (path.parent / "clip-token").write_text(TOKEN)
    path.write_text(
        f"station:\n  id: {STATION}\n"
        "audio:\n  decoder: ffmpeg\n"
        "engine:\n  type: onnx\n  threads: 1\n"
        f"postprocess:\n  min_confidence: {args.min_conf}\n"
        f"mqtt:\n  enabled: true\n  host: 127.0.0.1\n  port: {broker.port}\n"
        "  reconnect_max_s: 5\n  drain_timeout_s: 60\n"
        f"clips:\n  enabled: true\n  dir: {clips}\n"
        f"  upload:\n    url: {hub_url}\n    token_file: {path.parent / 'clip-token'}\n"
        "    retry_max_s: 10\n    drain_timeout_s: 60\n"
    )


def start_hub(broker: Mosquitto, dsn: str, work: Path, listen: str) -> subprocess.Popen:
    (work / "tokens").write_text(f"{STATION} {TOKEN}\n")
    (work / "hub.yaml").write_text(
        f"clips: {{dir: {work / 'hub-clips'}, tokens_file: {work / 'tokens'}}}\n"
    )
    command = [sys.executable, "-m", "birdd.daemon", "hub", "serve", "--mqtt", broker.url]
    command += ["--config", str(work / "hub.yaml"), "--postgres", dsn, "--listen", listen]
    command += ["--client-id", HUB_ID]
    log = (work / "hub.log").open("ab")
    env = {**clean_env(), "BIRDD_POSTGRES_PASSWORD": PASSWORD}
    hub = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
    broker.wait_for_log(f"{HUB_ID} 1 birdd/+/detections", timeout=60)
    return hub


def hub_ids(dsn: str, table: str) -> Set[str]:
    """Detection ids of the station in the hub's ``detections`` or ``clips`` table."""
    import psycopg

    column = "id" if table == "detections" else "detection_id"
    query = f"SELECT {column} FROM {table} WHERE station = %s"
    with psycopg.connect(f"{dsn} password={PASSWORD}", autocommit=True) as conn:
        return {row[0] for row in conn.execute(query, (STATION,))}


def check_station(db: Path, soak: Soak) -> Tuple[Set[str], Set[str]]:
    """The station's detection ids and the ids of those with a clip kept."""
    conn = sqlite3.connect(str(db))
    rows = conn.execute("SELECT id, clip_path, published_at, clip_uploaded_at FROM detections")
    rows = rows.fetchall()
    soak.gaps = conn.execute("SELECT count(*) FROM gaps").fetchone()[0]
    conn.close()
    clipped = [(rid, path, sent) for rid, path, _, sent in rows if path]
    soak.station_rows = len(rows)
    soak.outbox_left = sum(1 for row in rows if row[2] is None)
    soak.clips = len(clipped)
    soak.clips_missing = sum(1 for _, path, _ in clipped if not Path(path).exists())
    soak.clip_outbox_left = sum(1 for _, _, sent in clipped if sent is None)
    return {row[0] for row in rows}, {rid for rid, _, _ in clipped}


def wait_for_hub(dsn: str, want: Set[str], table: str, timeout_s: float) -> Set[str]:
    deadline = time.monotonic() + timeout_s
    have = hub_ids(dsn, table)
    while not want <= have and time.monotonic() < deadline:
        time.sleep(2)
        have = hub_ids(dsn, table)
    return have


def run_soak(args: argparse.Namespace, work: Path) -> Soak:
    soak = Soak(args.minutes, args.streams)
    template = Path(tempfile.mkdtemp(prefix="birdd-soak-pg-"))
    postgres = Postgres(make_template(template), fsync=True).start()
    broker = Mosquitto(work / "broker", persistent=True).start()
    listen = f"127.0.0.1:{free_port()}"
    hub = start_hub(broker, postgres.dsn, work, listen)
    db, clips, config = work / "station.sqlite", work / "clips", work / "station.yaml"
    station_config(config, broker, clips, f"http://{listen}", args)
    recordings = [audio_dir() / "soundscapes" / name for name in RECORDINGS]
    stop = threading.Event()
    try:
        with StreamServer(recordings) as server:
            inputs = [part for i in range(args.streams) for part in ("--input", server.url(i))]
            command = [sys.executable, "-m", "birdd.daemon", "run", "--config", str(config)]
            command += ["--db", str(db), "--format", "jsonl", *inputs]
            log = (work / "station.log").open("ab")
            station = subprocess.Popen(
                command, cwd=ROOT, env=clean_env(), stdout=subprocess.DEVNULL, stderr=log
            )
            sampler = threading.Thread(target=sample_until, args=(station, soak, stop))
            restarter = threading.Thread(
                target=restart_broker, args=(broker, soak, args.restart_every, stop)
            )
            sampler.start()
            restarter.start()
            stop.wait(args.minutes * 60)
            stop.set()
            sampler.join()
            restarter.join()
            station.send_signal(signal.SIGTERM)
            soak.exit_code = station.wait(timeout=DRAIN_S)
        rows, clipped = check_station(db, soak)
        have = wait_for_hub(postgres.dsn, rows, "detections", DRAIN_S)
        soak.hub_rows = len(have)
        soak.missing_at_hub = len(rows - have)
        have = wait_for_hub(postgres.dsn, clipped, "clips", DRAIN_S)
        soak.hub_clips = len(have)
        soak.clips_missing_at_hub = len(clipped - have)
        soak.load = " / ".join(f"{value:.1f}" for value in os.getloadavg())
    finally:
        stop.set()
        hub.send_signal(signal.SIGTERM)
        hub.wait(timeout=60)
        broker.stop()
        postgres.remove()
        shutil.rmtree(template, ignore_errors=True)
    return soak


def slope_per_hour(soak: Soak, values: Sequence[float]) -> float:
    """Least-squares growth after the warm-up, per hour (0 when too few samples)."""
    times = [s.at_s for s in soak.samples]
    pairs = [(t, v) for t, v in zip(times, values) if t >= WARM_UP_S]
    if len(pairs) < 3:
        return 0.0
    t, v = np.array(pairs).T
    return float(np.polyfit(t, v, 1)[0] * 3600)


def after_warm_up(soak: Soak, values: Sequence[float]) -> List[float]:
    return [v for s, v in zip(soak.samples, values) if s.at_s >= WARM_UP_S] or list(values)


def table(soak: Soak) -> List[str]:
    series = {
        "birdd RSS (MB)": [s.rss_mb for s in soak.samples],
        "tree PSS with ffmpeg (MB)": [s.pss_mb for s in soak.samples],
        "open file descriptors": [float(s.fds) for s in soak.samples],
        "threads": [float(s.threads) for s in soak.samples],
    }
    lines = [
        "| after the warm-up | min | max | trend per hour |",
        "|---|---:|---:|---:|",
    ]
    for name, values in series.items():
        kept = after_warm_up(soak, values)
        lines.append(
            f"| {name} | {min(kept):.0f} | {max(kept):.0f} | {slope_per_hour(soak, values):+.1f} |"
        )
    return lines


def outcome(soak: Soak) -> List[str]:
    return [
        f"- {soak.minutes:g} min, {soak.streams} streams, broker restarted {soak.restarts} times;"
        f" birdd exited {soak.exit_code}",
        f"- detections: {soak.station_rows} in the station's SQLite, {soak.hub_rows} at the hub,"
        f" **{soak.missing_at_hub} missing at the hub**; outbox left: **{soak.outbox_left}**",
        f"- clips: {soak.clips} kept, {soak.clips_missing} missing on disk, {soak.hub_clips} at"
        f" the hub, **{soak.clips_missing_at_hub} missing at the hub**; upload queue left:"
        f" **{soak.clip_outbox_left}**; gaps in the audio: {soak.gaps}",
    ]


def plot(soak: Soak) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s.at_s / 60 for s in soak.samples]
    figure, axes = plt.subplots(3, 1, figsize=(7, 7), sharex=True)
    axes[0].plot(minutes, [s.rss_mb for s in soak.samples], label="birdd RSS")
    axes[0].plot(minutes, [s.pss_mb for s in soak.samples], label="tree PSS (with ffmpeg)")
    axes[0].set_ylabel("MB")
    axes[0].legend(loc="lower right")
    axes[1].plot(minutes, [s.fds for s in soak.samples])
    axes[1].set_ylabel("open fds")
    axes[2].plot(minutes, [s.threads for s in soak.samples])
    axes[2].set_ylabel("threads")
    axes[2].set_xlabel("minutes (broker restarted every %g min)" % (soak_restart_min(soak)))
    for axis in axes:
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    figure.suptitle(f"birdd run soak: {soak.streams} real-time streams, MQTT, clips to the hub")
    figure.tight_layout()
    figure.savefig(PNG, dpi=90)
    plt.close(figure)
    return PNG


def soak_restart_min(soak: Soak) -> float:
    return round(soak.minutes / max(soak.restarts + 1, 1), 1)


def section(soak: Soak, args: argparse.Namespace) -> str:
    title = "## Soak: `birdd run` for hours with broker restarts and the hub (`bench/soak.py`)"
    machine = [
        *host_lines(f", load average {soak.load} at the end"),
        f"- `python bench/soak.py --minutes {args.minutes:g} --restart-every "
        f"{args.restart_every:g} --streams {args.streams}`: {args.streams} endless HTTP WAV "
        "streams of the shared soundscapes at real time into one `birdd run` (BirdNET V2.4, "
        f"ONNX, events at min_confidence {args.min_conf}), MQTT to a real mosquitto restarted "
        f"every {args.restart_every:g} s, `birdd hub serve` into PostgreSQL 15 (fsync on), "
        f"clips on; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
    ]
    reading = "\n".join([*outcome(soak), "", "![soak curves](img/soak.png)"])
    return section_text(START, END, title, machine, table(soak), reading)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--restart-every", type=float, default=300.0, help="seconds")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--min-conf", type=float, default=0.3)
    parser.add_argument("--no-docs", action="store_true", help="print only")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="birdd-soak-") as folder:
        soak = run_soak(args, Path(folder))
    print("\n".join([*table(soak), "", *outcome(soak)]))
    if not args.no_docs:
        plot(soak)
        replace_section(START, END, section(soak, args), "\n")
    lost = soak.missing_at_hub or soak.outbox_left or soak.clips_missing
    lost = lost or soak.clips_missing_at_hub or soak.clip_outbox_left
    return 1 if lost or soak.exit_code != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
