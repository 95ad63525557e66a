"""MQTT publishing with a real mosquitto, the real model and a real recording: one simulate run
with MQTT, stats and Home Assistant discovery on, seen by a subscriber from start to end."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from birdd_testing import REPO, THRUSH, recording, run_birdd
from broker import Mosquitto, Subscriber
from test_gate import write_gate

from birdd.daemon.mqtt.payload import detection_payload

pytestmark = pytest.mark.system  # a broker, the model, or birdd in a fresh process

SCHEMA = json.loads((REPO / "docs" / "schema" / "detection.v1.json").read_text())
STATS_SCHEMA = json.loads((REPO / "docs" / "schema" / "stats.v1.json").read_text())
THRUSH_AT_04 = 18  # BirdNET's detections in the thrush recording per window at 0.4
CONFIG = """
station: {id: garden, lat: 42.48, lon: -76.45}
mqtt:
  stats_interval_s: 1
  homeassistant: {enabled: true}
"""
STATS_FIELDS = {
    "station",
    "version",
    "uptime_s",
    "audio_seconds",
    "windows",
    "detections",
    "realtime_factor",
    "inference_latency_ms",
    "queue_depths",
    "dropped",
    "input_level_dbfs",
    "silence_s",
    "outbox_backlog",
    "mqtt_state",
    "disk_free_bytes",
    "cpu_temp_c",
    "sources",
    "gaps",
}


def stored_rows(db: Path) -> list:
    """(id, record_json, published_at) of each run's rows, in rowid order, oldest run first."""
    with contextlib.closing(sqlite3.connect(str(db))) as conn:
        runs = [row[0] for row in conn.execute("SELECT run_id FROM runs ORDER BY rowid")]
        query = "SELECT id, record_json, published_at FROM detections WHERE run_id = ?"
        return [conn.execute(query + " ORDER BY rowid", (run,)).fetchall() for run in runs]


@pytest.fixture(scope="module")
def published(birdnet_model, tmp_path_factory):
    """Simulate the thrush recording at 10x real time with --mqtt into a database that already
    holds an unpublished run (the same recording at 0.5, made without MQTT); every message the
    broker relayed."""
    folder = tmp_path_factory.mktemp("published")
    broker = Mosquitto(folder / "broker").start()
    config = folder / "config.yaml"
    config.write_text(CONFIG)
    db = folder / "birdd.sqlite"
    earlier = run_birdd(
        *("--simulate", str(recording(THRUSH)), "--per-window", "--station", "garden"),
        *("--db", str(db), "--output", "/dev/null"),
    )
    assert earlier.returncode == 0, earlier.stderr
    try:
        with Subscriber(broker, "#") as everything:
            result = run_birdd(
                *("--simulate", str(recording(THRUSH)), "--min-conf", "0.4", "--per-window"),
                *("--realtime", "10", "--format", "jsonl", "--db", str(db)),
                *("--config", str(config), "--mqtt", broker.url),
                timeout=120,
            )
            assert result.returncode == 0, result.stderr
            everything.wait_for(lambda ms: ms[-1].topic == "birdd/garden/status", timeout=10)
            messages = everything.messages
        with Subscriber(broker, "#") as late:  # what the broker kept: the retained messages
            retained = late.wait_for(lambda ms: len(ms) >= 6, timeout=5)
    finally:
        broker.stop()
    return messages, retained, db, result


def on_topic(messages, topic):
    return [m for m in messages if m.topic == topic]


def test_the_subscriber_gets_exactly_the_stored_rows_once_each(published):
    messages, _, db, _ = published
    received = on_topic(messages, "birdd/garden/detections")
    backlog, run = stored_rows(db)
    assert len(run) == THRUSH_AT_04 and len(backlog) == 16  # per window at 0.4 and at 0.5
    by_id = {json.loads(m.payload)["id"]: m for m in received}
    assert len(by_id) == len(received) == len(backlog) + len(run)
    for rows in (backlog, run):  # the earlier run's rows too; each run in order
        assert [i for i in by_id if i in {row[0] for row in rows}] == [row[0] for row in rows]
        for row_id, record_json, published_at in rows:
            assert not by_id[row_id].retain
            assert by_id[row_id].payload == detection_payload(record_json, 42.48, -76.45)
            assert published_at is not None and published_at.endswith("Z")


def test_every_message_is_valid_against_the_schema(published):
    messages, _, _, _ = published
    for message in on_topic(messages, "birdd/garden/detections"):
        payload = json.loads(message.payload)
        jsonschema.validate(payload, SCHEMA)
        assert (payload["lat"], payload["lon"]) == (42.48, -76.45)


def test_status_is_online_then_offline_at_a_clean_stop(published):
    messages, retained, _, result = published
    assert [m.payload for m in on_topic(messages, "birdd/garden/status")] == [b"online", b"offline"]
    assert [m.payload for m in on_topic(retained, "birdd/garden/status")] == [b"offline"]
    assert "mqtt: connected to 127.0.0.1:" in result.stderr


def test_stats_at_start_periodically_and_at_the_end(published):
    messages, _, _, _ = published
    reports = [json.loads(m.payload) for m in on_topic(messages, "birdd/garden/stats")]
    assert len(reports) >= 3  # at connect, every second of a 3 s run, at the end
    assert all(set(report) == STATS_FIELDS for report in reports)  # no gate: no "gate"
    for report in reports:
        jsonschema.validate(report, STATS_SCHEMA)
    assert not any(m.retain for m in on_topic(messages, "birdd/garden/stats"))
    last = reports[-1]
    assert last["audio_seconds"] == pytest.approx(30.0, abs=0.1)
    assert last["realtime_factor"] > 0  # how fast: bench/simulate.py
    assert 0 <= last["inference_latency_ms"]["p50"] <= last["inference_latency_ms"]["p95"]
    assert last["queue_depths"]["windows"] == 0
    assert any(key.startswith("sqlite ") for key in last["queue_depths"])
    assert last["dropped"] == {"windows": 0, "windows_unscored": 0, "overwritten_samples": 0}
    assert -60 < last["input_level_dbfs"] < 0 and last["silence_s"] == 0
    assert (last["outbox_backlog"], last["mqtt_state"]) == (0, "connected")
    assert last["disk_free_bytes"] > 0 and last["station"] == "garden"
    assert last["cpu_temp_c"] is None or 0 < last["cpu_temp_c"] < 130
    assert reports[0]["uptime_s"] < last["uptime_s"]


def test_home_assistant_discovery_names_topics_that_are_published(published):
    messages, retained, _, _ = published
    configs = {m.topic: json.loads(m.payload) for m in retained if m.topic.endswith("/config")}
    assert set(configs) == {
        "homeassistant/sensor/garden_last_species/config",
        "homeassistant/sensor/garden_last_confidence/config",
        "homeassistant/sensor/garden_detections_today/config",
        "homeassistant/binary_sensor/garden_online/config",
    }
    assert len({config["unique_id"] for config in configs.values()}) == 4
    online = configs.pop("homeassistant/binary_sensor/garden_online/config")
    assert online["state_topic"] == "birdd/garden/status"
    assert (online["payload_on"], online["payload_off"]) == ("online", "offline")
    assert on_topic(messages, "birdd/garden/state")  # refreshed as detections are delivered
    (kept,) = on_topic(retained, "birdd/garden/state")
    state = json.loads(kept.payload)
    for config in configs.values():
        assert config["state_topic"] == "birdd/garden/state"
        assert config["availability_topic"] == "birdd/garden/status"
        field = config["value_template"].split("value_json.")[1].split()[0]
        assert field in state
    assert state["last_species"] and 0.4 <= state["last_confidence"] <= 1
    assert state["detections_today"] >= 0


def test_stats_carry_the_gates_counts_with_a_gate(broker, tmp_path):
    """A gate that calls every BirdNET window no-bird (bird probability 0.007 whatever the
    1024-d embedding): the stats count every window it judged and every bird score it dropped,
    which are the detections the same run makes without it."""
    gate = write_gate(tmp_path, weights=np.zeros(1024))
    with Subscriber(broker, "birdd/garden/#") as station:
        result = run_birdd(
            "--simulate", str(recording(THRUSH)), "--min-conf", "0.4", "--per-window",
            "--gate", str(gate), "--station", "garden", "--db", str(tmp_path / "db.sqlite"),
            "--output", "/dev/null", "--mqtt", broker.url, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        station.wait_for(lambda ms: ms[-1].topic == "birdd/garden/status", timeout=10)
        messages = station.messages
    reports = [json.loads(m.payload) for m in on_topic(messages, "birdd/garden/stats")]
    for report in reports:
        jsonschema.validate(report, STATS_SCHEMA)
        assert set(report) == STATS_FIELDS | {"gate"}
    counts = {"windows": 10, "no_bird_windows": 10, "birds_dropped": THRUSH_AT_04}
    assert reports[-1]["gate"] == counts
    assert not on_topic(messages, "birdd/garden/detections")
    assert f"dropped {THRUSH_AT_04} bird score(s)" in result.stderr


@pytest.mark.parametrize(
    "url, words",
    [
        ("http://localhost", "use mqtt://host"),
        ("mqtt://user:secret@localhost", "no password in the URL"),
        ("mqtt://localhost:99999", "port"),
    ],
)
def test_a_bad_mqtt_url_is_one_line_and_exit_2(tmp_path, url, words):
    result = run_birdd("--simulate", "x.wav", "--db", str(tmp_path / "db"), "--mqtt", url)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and words in result.stderr
    assert not (tmp_path / "db").exists()


def test_publish_needs_mqtt_and_an_existing_database(tmp_path):
    no_mqtt = run_birdd("publish", "--db", str(tmp_path / "db"))
    assert no_mqtt.returncode == 2 and "MQTT is off" in no_mqtt.stderr
    no_db = run_birdd("publish", "--db", str(tmp_path / "db"), "--mqtt", "mqtt://localhost")
    assert no_db.returncode == 2 and "no such database" in no_db.stderr
    assert not (tmp_path / "db").exists()
