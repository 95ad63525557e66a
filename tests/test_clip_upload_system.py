"""Clips reach the hub, whole system: ``birdd hub serve`` on PostgreSQL 15 (tests/postgres.py)
and mosquitto, and a station running ``birdd --simulate`` on the thrush soundscape at 3x real
time with real BirdNET, clips and their upload on. The hub is stopped once the first clip
has arrived and started again once the station's ``…/stats`` says uploads fail and clips
wait, while the station goes on writing clips: at the end every clip the station kept is on
the hub exactly once (one row, one file, the station's SHA-256), the station's outbox is
empty, its last stats say so, and the station page in Debian's Chromium plays each clip
with its spectrogram."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List

import jsonschema
import pytest
from birdd_testing import THRUSH, recording
from broker import Mosquitto, Subscriber, free_port
from postgres import PASSWORD, Postgres

from birdd.hub.store import open_store

pytestmark = pytest.mark.system

TOKEN = "thrush-station-upload-token"
FAST = "{reconnect_min_s: 0.1, reconnect_max_s: 0.5}"
STATS_SCHEMA = json.loads((Path(__file__).parents[1] / "docs/schema/stats.v1.json").read_text())
CHROMIUM = Path("/usr/bin/chromium")


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class Hub:
    """``birdd hub serve`` as its own process, stopped and started again on the same port."""

    def __init__(self, folder: Path, broker: Mosquitto, postgres: Postgres) -> None:
        (folder / "tokens").write_text(f"thrush {TOKEN}\n")
        self.config = folder / "hub.yaml"
        self.clips = folder / "hub-clips"
        self.config.write_text(
            f"mqtt: {FAST}\ningest: {{batch_wait_s: 0.02}}\nweb: {{refresh_s: 0.5}}\n"
            f"clips: {{dir: {self.clips}, tokens_file: {folder / 'tokens'}}}\n"
        )
        self.listen = f"127.0.0.1:{free_port()}"
        self.address = f"http://{self.listen}"
        self.command = [sys.executable, "-m", "birdd.daemon", "hub", "serve"]
        self.command += ["--config", str(self.config), "--mqtt", broker.url]
        self.command += ["--postgres", postgres.dsn, "--listen", self.listen]
        self.log = folder / "hub.log"
        self.env = {k: v for k, v in os.environ.items() if k != "BIRDD_HUB_TOKEN"}
        self.env["BIRDD_POSTGRES_PASSWORD"] = PASSWORD
        self.process = self.start()

    def start(self) -> subprocess.Popen:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        wait_until(self.answers, 30, "the hub's web server")
        return self.process

    def stop(self) -> None:
        self.process.terminate()
        assert self.process.wait(timeout=15) == 0, self.log.read_text()

    def answers(self) -> bool:
        try:
            self.api("/api/stations")
            return True
        except OSError:
            return False

    def api(self, path: str) -> Dict[str, Any]:
        with urllib.request.urlopen(self.address + path, timeout=10) as answer:
            return dict(json.loads(answer.read()))

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.address + path, timeout=30) as answer:
            return bytes(answer.read())

    def files(self) -> List[Path]:
        return sorted(self.clips.rglob("*.flac"))


def station_run(folder: Path, hub: Hub, broker: Mosquitto) -> subprocess.Popen:
    (folder / "clip-token").write_text(TOKEN)
    config = folder / "station.yaml"
    upload = f"{{url: {hub.address}, token_file: {folder / 'clip-token'}, retry_min_s: 0.1, "
    upload += "retry_max_s: 0.5, drain_timeout_s: 30}"
    mqtt = FAST[:-1] + ", stats_interval_s: 1}"
    config.write_text(f"station: {{id: thrush}}\nmqtt: {mqtt}\nclips: {{upload: {upload}}}\n")
    command = [sys.executable, "-m", "birdd.daemon", "--simulate", str(recording(THRUSH))]
    command += ["--per-window", "--min-conf", "0.1", "--realtime", "3", "--config", str(config)]
    command += ["--clips", str(folder / "clips"), "--output", "/dev/null"]
    command += ["--db", str(folder / "station.sqlite"), "--mqtt", broker.url]
    env = {k: v for k, v in os.environ.items() if k != "BIRDD_CLIP_TOKEN"}
    return subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )


def station_clips(db: Path) -> Dict[str, Dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(str(db))) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT id, clip_path, clip_sha256, clip_uploaded_at, clip_upload_error "
            "FROM detections WHERE clip_path IS NOT NULL"
        )
        return {row["id"]: dict(row) for row in rows}


def test_every_clip_reaches_the_hub_once_across_a_hub_restart(
    birdnet_model, postgres, broker_factory, tmp_path
):
    broker = broker_factory("plain", persistent=True)
    hub = Hub(tmp_path, broker, postgres)
    try:
        broker.wait_for_log(" 1 birdd/+/detections", timeout=30)
        with Subscriber(broker, "birdd/thrush/stats") as stats:
            station = station_run(tmp_path, hub, broker)
            wait_until(lambda: len(hub.files()) >= 1, 60, "the first clip on the hub")
            hub.stop()
            before = len(hub.files())
            # the station goes on: clips written now wait in its outbox, and its stats say so
            stats.wait_for(lambda ms: any(uploads_failing(m) for m in ms), timeout=30)
            hub.start()
            _, errors = station.communicate(timeout=120)
            reports = [json.loads(m.payload) for m in stats.messages]
        assert station.returncode == 0, errors
        clips = station_clips(tmp_path / "station.sqlite")
        assert before < len(clips), "every clip arrived before the hub stopped"
        assert "clips: upload failed" in errors  # the outage was seen and retried
        assert all(c["clip_uploaded_at"] and not c["clip_upload_error"] for c in clips.values())
        for report in reports:
            jsonschema.validate(report, STATS_SCHEMA)
        last = {"waiting": 0, "uploaded": len(clips), "failed": 0, "problem": None}
        assert reports[-1]["clip_uploads"] == last  # the stats published at the clean stop
        check_hub(hub, postgres, clips)
        print(f"{len(clips)} clips, {before} on the hub when it stopped")
        wait_until(lambda: len(listed(hub)) == len(clips), 30, "the clips' detections at the hub")
        check_page(hub, clips)
    finally:
        if hub.process.poll() is None:
            hub.stop()
        broker.stop()
    assert "Traceback" not in hub.log.read_text(), hub.log.read_text()


def uploads_failing(message) -> bool:
    uploads = json.loads(message.payload)["clip_uploads"]
    return uploads["waiting"] >= 1 and "did not answer" in (uploads["problem"] or "")


def check_hub(hub: Hub, postgres: Postgres, clips: Dict[str, Dict[str, Any]]) -> None:
    """One row and one file per clip, with the station's bytes."""
    store = open_store(postgres=postgres.dsn, password=PASSWORD)
    try:
        held = store.clips(list(clips))
    finally:
        store.close()
    assert set(held) == set(clips)
    digests = {c["clip_sha256"] for c in clips.values()}
    assert {f.stem for f in hub.files()} == digests and len(hub.files()) == len(digests)
    for detection_id, clip in clips.items():
        assert held[detection_id].station == "thrush"
        local = hashlib.sha256(Path(clip["clip_path"]).read_bytes()).hexdigest()
        served = hashlib.sha256(hub.get(f"/api/clips/thrush/{detection_id}")).hexdigest()
        assert local == clip["clip_sha256"] == held[detection_id].sha256 == served


def listed(hub: Hub) -> List[Dict[str, Any]]:
    found = hub.api("/api/detections?station=thrush&limit=1000")["detections"]
    return [d for d in found if d.get("clip_url")]


def check_page(hub: Hub, clips: Dict[str, Dict[str, Any]]) -> None:
    """The station page plays every clip (up to its first page) and shows its spectrogram."""
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install 'birdd[dev]'")
    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing: bash tests/install.sh"
    day = listed(hub)[0]["start"][:10]
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{hub.address}/stations/thrush?day={day}")
            shown = min(len(clips), 50)
            page.wait_for_function(
                f"document.querySelectorAll('#detections audio').length >= {shown}",
                timeout=15_000,
            )
            page.wait_for_function(
                "[...document.querySelectorAll('img.spectrogram')].slice(0, 3)"
                ".every((i) => i.complete && i.naturalWidth > 0)",
                timeout=15_000,
            )
            sources = page.eval_on_selector_all("#detections audio", "(n) => n.map((a) => a.src)")
        finally:
            browser.close()
    assert {s.rsplit("/", 1)[1] for s in sources} <= set(clips)
