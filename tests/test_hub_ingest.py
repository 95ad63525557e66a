"""The hub end to end with real processes: three ``birdd --simulate --realtime`` stations on
three recordings → a real mosquitto with persistence → ``birdd hub serve`` on a real
PostgreSQL 15. Every detection each station stored in its own SQLite arrives exactly once,
also when the broker restarts, the hub is SIGKILLed and restarted, or PostgreSQL restarts
mid-run. Malformed, oversized and schema-failing payloads are kept as rejected, with reasons.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Set

from birdd_testing import THRUSH, recording
from postgres import PASSWORD, Postgres

from birdd.hub.store import DetectionQuery, open_store

STATIONS = {  # station id → (recording, --realtime factor): each runs for about 20 s
    "thrush-wood": (THRUSH, "1.5"),
    "jura": ("maad_jura_S4A03895_20190522_060000.wav", "0.5"),
    "robin": ("Erithacus_rubecula_robin.ogg", "0.15"),
}
FAST = "{reconnect_min_s: 0.1, reconnect_max_s: 0.5}"
SUBSCRIBED = " 1 birdd/+/detections"


def start_hub(tmp_path: Path, broker_url: str, store_flags: List[str]) -> subprocess.Popen:
    config = tmp_path / "hub.yaml"
    config.write_text(f"mqtt: {FAST}\ningest: {{batch_wait_s: 0.02}}\n")
    command = [sys.executable, "-m", "birdd.daemon", "hub", "serve", "--config", str(config)]
    command += ["--mqtt", broker_url, "--no-web", *store_flags]
    env = {**os.environ, "BIRDD_POSTGRES_PASSWORD": PASSWORD}
    log = (tmp_path / "hub.log").open("ab")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def start_station(tmp_path: Path, station: str, broker_url: str) -> subprocess.Popen:
    name, factor = STATIONS[station]
    config = tmp_path / f"{station}.yaml"
    config.write_text(f"station: {{id: {station}}}\nmqtt: {FAST}\n")
    command = [sys.executable, "-m", "birdd.daemon", "--simulate", str(recording(name))]
    command += ["--realtime", factor, "--per-window", "--min-conf", "0.1", "--config", str(config)]
    command += ["--db", str(tmp_path / f"{station}.sqlite"), "--mqtt", broker_url]
    command += ["--output", "/dev/null"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def station_ids(db: Path) -> Set[str]:
    """The detections a station stored (its own record of what it published)."""
    with contextlib.closing(sqlite3.connect(str(db))) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM detections")}


def hub_rows(postgres: Postgres) -> Dict[str, int]:
    """id → resends of every detection in the hub's PostgreSQL; {} while it is unreachable
    or the schema is not there yet."""
    try:
        lines = postgres.psql("SELECT id, resends FROM detections").splitlines()
    except RuntimeError:
        return {}
    return {line.split("\t")[0]: int(line.split("\t")[1]) for line in lines if line}


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_three_stations_every_detection_exactly_once_through_outages(
    birdnet_model, broker_factory, postgres, tmp_path
):
    """One run of three stations, and mid-run, one after the other: the broker restarts, the
    hub is SIGKILLed (mid-batch, unacknowledged messages and all) and restarted, PostgreSQL
    restarts. The stations go on detecting meanwhile."""
    broker = broker_factory("plain", persistent=True)
    flags = ["--postgres", postgres.dsn]
    hubs = [start_hub(tmp_path, broker.url, flags)]
    stations: Dict[str, subprocess.Popen] = {}
    stored = lambda count: lambda: len(hub_rows(postgres)) >= count  # noqa: E731
    try:
        broker.wait_for_log(SUBSCRIBED, timeout=30)
        stations = {name: start_station(tmp_path, name, broker.url) for name in STATIONS}
        wait_until(stored(2), 60, "the first detections")
        broker.stop()
        time.sleep(1.0)  # the stations go on detecting into SQLite meanwhile
        broker.start()
        seen = len(hub_rows(postgres))
        wait_until(stored(seen + 1), 30, "a detection after the broker's restart")
        hubs[-1].send_signal(signal.SIGKILL)
        hubs[-1].wait(timeout=10)
        time.sleep(1.0)  # the broker queues for the hub's session meanwhile
        hubs.append(start_hub(tmp_path, broker.url, flags))
        seen = len(hub_rows(postgres))
        wait_until(stored(seen + 1), 30, "a detection after the hub's restart")
        postgres.stop()
        time.sleep(1.0)  # the hub holds its batch, acknowledges nothing, retries
        postgres.start()
        errors = {name: station.communicate(timeout=90)[1] for name, station in stations.items()}
        for name, station in stations.items():
            assert station.returncode == 0, errors[name]
        expected = set().union(*(station_ids(tmp_path / f"{s}.sqlite") for s in STATIONS))
        assert all(station_ids(tmp_path / f"{s}.sqlite") for s in STATIONS)
        wait_until(lambda: set(hub_rows(postgres)) >= expected, 30, "every detection")
        time.sleep(0.5)  # anything late (a duplicate) would land now
        rows = hub_rows(postgres)
    finally:
        for process in [*stations.values(), *hubs]:
            process.kill()
            process.wait(timeout=10)
    log = (tmp_path / "hub.log").read_text()
    assert set(rows) == expected, log  # each once (the id is the key), none lost, none extra
    per_station = postgres.psql("SELECT station, COUNT(*) FROM detections GROUP BY station")
    assert {line.split("\t")[0] for line in per_station.splitlines()} == set(STATIONS)
    assert "Traceback" not in log, log
    assert log.count("connected to the broker") >= 3, log  # start, broker back, hub back
    assert "session resumed" in log, log
    assert "the database:" in log and "the database is back" in log, log


def test_malformed_oversized_and_schema_failing_payloads_are_kept_as_rejected(
    broker_factory, tmp_path
):
    broker = broker_factory("plain", persistent=True)
    hub = start_hub(tmp_path, broker.url, ["--db", str(tmp_path / "hub.sqlite")])
    good = {
        "schema_version": 1,
        "id": "0" * 31 + "1",
        "station": "s1",
        "source": "mic",
        "channel": "mix",
        "start": "2024-05-15T06:00:00.000Z",
        "end": "2024-05-15T06:00:03.000Z",
        "offset_start": 0,
        "offset_end": 3,
        "species": {"scientific": "Turdus merula", "common": "Eurasian Blackbird", "code": None},
        "is_bird": True,
        "confidence": 0.9,
        "model": {"name": "birdnet", "version": "2.4", "sha256": "a" * 64},
    }
    no_species = {k: v for k, v in good.items() if k != "species"}
    sent = {
        b"{not json": "not JSON",
        b"\xff\xfe": "not UTF-8",
        b"x" * 70_000: "over the 65536-byte limit",
        json.dumps(no_species).encode(): "fails detection.v1.json",
        json.dumps({**good, "id": "1" * 32, "source": "a\x00b"}).encode(): "NUL",
        json.dumps({**good, "id": "2" * 32, "start": "2024-13-45T06:00:00.000Z"}).encode(): (
            "is not a date"
        ),
    }
    try:
        broker.wait_for_log(SUBSCRIBED, timeout=30)
        client = broker.client()
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        for payload in [*sent, json.dumps(good).encode(), json.dumps(good).encode()]:
            client.publish("birdd/s1/detections", payload, qos=1).wait_for_publish(5)
        client.publish("birdd/s1/status", b"maybe", qos=1).wait_for_publish(5)
        client.disconnect()
        client.loop_stop()
        store = open_store(sqlite=tmp_path / "hub.sqlite")
        wait_until(lambda: len(store.rejected()) == len(sent) + 1, 20, "the rejected rows")
        wait_until(lambda: store.count_detections(DetectionQuery()) == 1, 20, "the good one")
        time.sleep(0.3)
        rejected = store.rejected()
        (good_row,) = store.detections(DetectionQuery())
        store.close()
    finally:
        hub.send_signal(signal.SIGTERM)
        hub.wait(timeout=10)
    reasons = [row.reason for row in reversed(rejected)]
    for reason, expected in zip(reasons, [*sent.values(), "a status is 'online' or 'offline'"]):
        assert expected in reason
    big = next(row for row in rejected if row.size == 70_000)
    assert len(big.payload) == 4096 and big.topic == "birdd/s1/detections"
    assert good_row.id == good["id"] and good_row.resends == 1  # sent twice, stored once
    assert hub.returncode == 0
    log = (tmp_path / "hub.log").read_text()
    assert "wrote 2 detection message(s) (re-sends included), kept 7 rejected" in log
