"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright
(``executable_path``, no downloaded browser). Three ``birdd --simulate`` stations on the
recordings in tests/data/audio publish to a real mosquitto; ``birdd hub serve`` ingests them
into SQLite and serves the pages. The overview lists the stations with their state, a station
page shows its species and an hourly chart, a detection published while a page is open shows
up without a reload. Screenshots of each page land in the test's folder (the path is printed).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from datetime import time as clock
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Set

import pytest
from birdd_testing import THRUSH, recording
from broker import Mosquitto, free_port

pytestmark = pytest.mark.system
playwright = pytest.importorskip("playwright.sync_api", reason="pip install 'birdd[dev]'")

CHROMIUM = Path("/usr/bin/chromium")
STATIONS = {
    "thrush-wood": THRUSH,
    "jura": "maad_jura_S4A03895_20190522_060000.wav",
    "robin": "Erithacus_rubecula_robin.ogg",
}
LATE = "pykanto_audiomoth_20210502_040000.wav"  # the detection that arrives while watching
FAST = "{reconnect_min_s: 0.1, reconnect_max_s: 0.5}"
TIMEOUT_MS = 15_000


def start_time(hour: int) -> str:
    """Today at ``hour`` in the local time zone (the hub's day), as UTC ISO 8601."""
    local = datetime.combine(datetime.now().date(), clock(hour)).astimezone()
    return local.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_station(folder: Path, station: str, name: str, broker: Mosquitto, hour: int):
    config = folder / f"{station}.yaml"
    config.write_text(f"station: {{id: {station}}}\nmqtt: {FAST}\n")
    command = [sys.executable, "-m", "birdd.daemon", "--simulate", str(recording(name))]
    command += ["--per-window", "--min-conf", "0.1", "--config", str(config)]
    command += ["--start-time", start_time(hour), "--output", "/dev/null"]
    command += ["--db", str(folder / f"{station}.sqlite"), "--mqtt", broker.url]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> None:
    _, errors = process.communicate(timeout=120)
    assert process.returncode == 0, errors


def station_ids(db: Path) -> Set[str]:
    with contextlib.closing(sqlite3.connect(str(db))) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM detections")}


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


class Hub:
    def __init__(self, folder: Path, broker: Mosquitto) -> None:
        self.folder, self.broker = folder, broker
        self.address = f"http://127.0.0.1:{free_port()}"
        config = folder / "hub.yaml"
        config.write_text(
            f"mqtt: {FAST}\ningest: {{batch_wait_s: 0.02}}\nweb: {{refresh_s: 0.5}}\n"
        )
        command = [sys.executable, "-m", "birdd.daemon", "hub", "serve", "--config", str(config)]
        command += ["--mqtt", broker.url, "--db", str(folder / "hub.sqlite")]
        command += ["--listen", self.address.replace("http://", "")]
        self.log = folder / "hub.log"
        env = {k: v for k, v in os.environ.items() if k != "BIRDD_HUB_TOKEN"}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)

    def api(self, path: str) -> Dict[str, Any]:
        with urllib.request.urlopen(self.address + path, timeout=10) as answer:
            return dict(json.loads(answer.read()))

    def stored(self) -> Set[str]:
        try:
            found: Set[str] = set()
            for station in STATIONS:
                page = self.api(f"/api/detections?station={station}&limit=1000")
                found |= {d["id"] for d in page["detections"]}
            return found
        except OSError:
            return set()


@pytest.fixture(scope="module")
def hub(birdnet_model, tmp_path_factory) -> Iterator[Hub]:
    """The hub with every detection of the three stations stored (and their last stats)."""
    folder = tmp_path_factory.mktemp("hub-dashboard")
    broker = Mosquitto(folder / "broker", persistent=True).start()
    served = Hub(folder, broker)
    try:
        broker.wait_for_log(" 1 birdd/+/detections", timeout=30)
        runs = [run_station(folder, s, n, broker, 6) for s, n in STATIONS.items()]
        for process in runs:
            finish(process)
        expected = set().union(*(station_ids(folder / f"{s}.sqlite") for s in STATIONS))
        assert all(station_ids(folder / f"{s}.sqlite") for s in STATIONS)
        wait_until(lambda: served.stored() >= expected, 30, "every detection in the hub")
        wait_until(
            lambda: all(s["stats"] for s in served.api("/api/stations")["stations"]),
            10,
            "the stations' stats",
        )
        yield served
    finally:
        served.process.terminate()
        served.process.wait(timeout=15)
        broker.stop()
    assert "Traceback" not in served.log.read_text(), served.log.read_text()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: bash tests/install.sh (Debian's chromium)")
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser, hub) -> Iterator[Any]:
    opened = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: List[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.set_default_timeout(TIMEOUT_MS)
    yield opened
    opened.close()
    assert not errors, errors


def screenshot(page: Any, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def test_the_overview_lists_the_three_stations_with_their_state(hub, page, tmp_path):
    page.goto(hub.address + "/")
    page.wait_for_function("document.querySelectorAll('#stations tbody tr').length === 3")
    api = {s["id"]: s for s in hub.api("/api/stations")["stations"]}
    for station in STATIONS:
        row = page.locator(f'#stations tr[data-station="{station}"]')
        cells = row.locator("td").all_inner_texts()
        assert cells[0] == station
        assert cells[1] == api[station]["status"] == "offline"  # a clean stop says so
        assert cells[4].endswith("× real time")  # from the stats report
        assert cells[5] == str(api[station]["stats"]["outbox_backlog"])
    page.wait_for_selector("#species tbody tr")
    screenshot(page, tmp_path, "overview")


def test_a_station_page_shows_its_species_and_an_hourly_chart(hub, page, tmp_path):
    day = hub.api("/api/stations/thrush-wood/day")
    page.goto(hub.address + "/stations/thrush-wood")
    page.wait_for_selector("#species tbody tr")
    names = page.locator("#species tbody tr td:first-child").all_inner_texts()
    assert names == [s["common"] for s in day["species"]] and names
    total = page.evaluate(
        "Chart.getChart('activity').data.datasets.flatMap(d => d.data).reduce((a, b) => a + b)"
    )
    assert total == sum(s["detections"] for s in day["species"])
    assert page.evaluate("Chart.getChart('activity').data.labels.length") in (23, 24, 25)
    page.wait_for_selector("#detections tbody tr")
    rows = page.locator("#detections tbody tr").count()
    assert rows == min(50, sum(s["detections"] for s in day["species"]))
    screenshot(page, tmp_path, "station")


def test_a_detection_arriving_over_mqtt_shows_without_a_reload(hub, page, tmp_path):
    page.goto(hub.address + "/stations/robin")
    page.wait_for_selector("#detections tbody tr")
    before = set(page.locator("#detections tbody tr").evaluate_all("r => r.map(x => x.dataset.id)"))
    page.evaluate("window.notReloaded = true")
    late = run_station(hub.folder, "robin", LATE, hub.broker, 7)
    finish(late)
    new = station_ids(hub.folder / "robin.sqlite") - before
    assert new, "the late recording gave the station no new detection"
    for ident in new:
        page.wait_for_selector(f'#detections tr[data-id="{ident}"]')
    assert page.evaluate("window.notReloaded") is True
    assert page.locator("#detections tr.new").count() >= len(new)
    screenshot(page, tmp_path, "station-live")


def test_a_species_page_shows_where_and_a_daily_chart(hub, page, tmp_path):
    top = hub.api("/api/species")["species"][0]
    page.goto(hub.address + "/species/" + urllib.request.quote(top["scientific"]))
    page.wait_for_selector("#where tbody tr")
    stations = page.locator("#where tbody tr td:first-child").all_inner_texts()
    found = hub.api("/api/species/" + urllib.request.quote(top["scientific"]))
    assert stations == [s["station"] for s in found["stations"]]
    assert page.locator("#common-name").inner_text() == top["common"]
    total = page.evaluate(
        "Chart.getChart('daily').data.datasets.flatMap(d => d.data).reduce((a, b) => a + b)"
    )
    assert total == sum(s["detections"] for s in found["stations"])
    screenshot(page, tmp_path, "species")
