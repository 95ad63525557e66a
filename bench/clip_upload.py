"""How fast a station's clip outbox empties into the hub: clips per second and MB/s through
the uploader (``daemon/clips/upload.py``: read, SHA-256, ``PUT``, mark in SQLite) into a
``birdd hub serve`` process of its own (SQLite store; check, content-addressed file, row).

Each run makes a fresh station database with ``--clips`` 5 s FLAC clips cut from the thrush
soundscape at 48 kHz (each a different slice, so none is a duplicate), a fresh hub, and times
one uploader from start until its outbox is empty (a backlog after an outage: the uploader's
best case is a hub that answers at once). Prints a markdown table and rewrites the clip upload
section of docs/benchmarks.md.

    python bench/clip_upload.py [--clips 200] [--runs 3] [--no-docs]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from statistics import median
from typing import List, Tuple

import numpy as np
import soundfile
from common import ROOT, host_lines, replace_section, section_text, step

sys.path.insert(0, str(ROOT / "tests"))
from birdd_testing import RATE, THRUSH, read_mono, recording
from broker import free_port

from birdd.daemon.clips.config import UploadConfig
from birdd.daemon.clips.upload import ClipUploader
from birdd.daemon.records import ClipInfo, Detection, RunInfo
from birdd.daemon.store.sqlite_store import SQLiteStore
from birdd.engines.models.labels import Species

START = "<!-- clip-upload:start (written by bench/clip_upload.py) -->"
END = "<!-- clip-upload:end -->"
TOKEN = "bench-station-upload-token"
CLIP_S = 5.0
WHEN = datetime(2024, 5, 2, 4, 0, 0, tzinfo=timezone.utc)


def make_station(folder: Path, audio: np.ndarray, count: int, run: int) -> Tuple[Path, int]:
    """A station database with ``count`` clips; returns it and the clips' bytes in all."""
    clips: List[Detection] = []
    size = 0
    samples = int(CLIP_S * RATE)
    for n in range(count):
        start = (n * 4801 + run * 97) % (audio.size - samples)
        out = io.BytesIO()
        soundfile.write(out, audio[start : start + samples], RATE, format="FLAC")
        path = folder / f"clip{n}.flac"
        path.write_bytes(out.getvalue())
        size += path.stat().st_size
        clips.append(detection(run, n, ClipInfo(str(path), CLIP_S, "")))
    db = folder / "station.sqlite"
    info = RunInfo("bench", "bench", "simulate", "thrush", WHEN, "filename", {}, "{}")
    with SQLiteStore(db) as store:
        store.begin_run(info)
        store.add_detections("bench", clips)
    return db, size


def detection(run: int, n: int, clip: ClipInfo) -> Detection:
    moment = WHEN + timedelta(seconds=5 * n)
    return Detection(
        id=f"{run:08x}{n:024x}",
        species=Species("Hylocichla mustelina", "Wood Thrush", "woothr", True),
        species_index=1,
        confidence=0.9,
        offset_start=5.0 * n,
        offset_end=5.0 * n + 3,
        start=moment,
        end=moment + timedelta(seconds=3),
        source="thrush",
        channel="mix",
        station="bench",
        model={"name": "m", "version": "1", "sha256": "0" * 64},
        clip=clip,
    )


def start_hub(folder: Path) -> Tuple[subprocess.Popen, str]:
    (folder / "tokens").write_text(f"bench {TOKEN}\n")
    (folder / "hub.yaml").write_text(
        f"clips: {{dir: {folder / 'hub-clips'}, tokens_file: {folder / 'tokens'}}}\n"
    )
    listen = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "birdd.daemon", "hub", "serve"]
    command += ["--config", str(folder / "hub.yaml"), "--db", str(folder / "hub.sqlite")]
    command += ["--listen", listen, "--mqtt", f"mqtt://127.0.0.1:{free_port()}", "-q"]
    env = {k: v for k, v in os.environ.items() if k != "BIRDD_HUB_TOKEN"}
    hub = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    address = f"http://{listen}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(address + "/api/stations", timeout=2).close()
            return hub, address
        except OSError:
            time.sleep(0.2)
    hub.kill()
    raise RuntimeError("the hub did not answer in 30 s")


def one_run(audio: np.ndarray, count: int, run: int) -> Tuple[float, int]:
    """Seconds to upload ``count`` clips, and their bytes."""
    with tempfile.TemporaryDirectory(prefix="birdd-clip-upload-") as name:
        folder = Path(name)
        db, size = make_station(folder, audio, count, run)
        hub, address = start_hub(folder)
        try:
            uploader = ClipUploader(db, UploadConfig(url=address), TOKEN)
            began = time.perf_counter()
            uploader.start()
            if not uploader.drain(600, threading.Event()):
                raise RuntimeError("the outbox did not empty in 600 s")
            took = time.perf_counter() - began
            left = uploader.stop()
            assert left == 0 and uploader.uploaded == count, (left, uploader.uploaded)
        finally:
            hub.terminate()
            hub.wait(timeout=15)
        return took, size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    audio = np.tile(read_mono(recording(THRUSH)), 4)
    load_before = os.getloadavg()[0]
    rates, mbs = [], []
    for run in range(args.runs):
        step(f"run {run + 1}: {args.clips} clips")
        took, size = one_run(audio, args.clips, run)
        rates.append(args.clips / took)
        mbs.append(size / 1e6 / took)
        step(f"{args.clips / took:.1f} clips/s, {size / 1e6 / took:.2f} MB/s")
    load_after = os.getloadavg()[0]
    table = [
        "| what | median | min | max |",
        "|---|---:|---:|---:|",
        f"| clips per second | {median(rates):.1f} | {min(rates):.1f} | {max(rates):.1f} |",
        f"| MB per second | {median(mbs):.2f} | {min(mbs):.2f} | {max(mbs):.2f} |",
    ]
    print("\n".join(table))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = [
        *host_lines(f", 1-minute load average {load_before:.2f} before and {load_after:.2f} after"),
        f"- {args.runs} runs of {args.clips} clips of {CLIP_S:g} s (16-bit FLAC, 48 kHz, "
        f"~{mbs[0] / rates[0] * 1e3:.0f} kB each) from a fresh station database into a fresh "
        f"`birdd hub serve` (SQLite store) on 127.0.0.1, one uploader thread; {stamp}",
    ]
    reading = (
        "One uploader sends one clip at a time (read, SHA-256, `PUT`, the hub's check and "
        "write, the mark in SQLite): a station writes a clip per detection event, a few a "
        "minute at a busy dawn, so a backlog of a day's clips after an outage drains in "
        "seconds. The machine was shared with other work (load average above)."
    )
    title = "## Clip upload: a station's outbox into the hub (`bench/clip_upload.py`)"
    section = section_text(START, END, title, machine, table, reading)
    if not args.no_docs:
        replace_section(START, END, section, "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
