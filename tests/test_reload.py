"""SIGHUP reloads the config: which keys apply live (unit), and a real `birdd run` on stdin
fed the thrush recording whose threshold changes between two plays of it (system)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
from pathlib import Path
from typing import List

import pytest
from broker import Subscriber
from reload_daemon import PLAY_S, first_play, gaps, heard, threshold_between, write_config

from birdd.daemon.app.reload import ConfigReload, applied_config, changed_keys, split_live
from birdd.daemon.clips.budget import Budget
from birdd.daemon.config import BirddConfig, load_config
from birdd.daemon.mqtt.service import MqttPublisher
from birdd.daemon.postprocess.config import PostprocessConfig
from birdd.daemon.store.housekeeping import Housekeeping

# ---------------------------------------------------------------- unit: what changed, what applies


def test_changed_keys_are_dotted_leaves() -> None:
    old = {"a": {"b": 1, "c": [1, 2]}, "d": None}
    new = {"a": {"b": 2, "c": [1, 2]}, "d": {"lat": 1.0}}
    assert changed_keys(old, new) == ["a.b", "d"]
    assert changed_keys(old, old) == []


def test_thresholds_apply_live_and_the_rest_needs_a_restart() -> None:
    keys = [
        "postprocess.min_confidence",
        "postprocess.species_thresholds.Turdus merula_Eurasian Blackbird",
        "postprocess.location",
        "postprocess.max_event_s",
        "postprocess.gate",
        "audio.inputs",
        "engine.model",
    ]
    applied, restart = split_live([*keys, "mqtt.host"], mqtt_live=False)
    assert applied == keys[:3]
    assert restart == [*keys[3:], "mqtt.host"]


def test_mqtt_reconnects_unless_it_is_turned_on_or_off() -> None:
    assert split_live(["mqtt.host", "mqtt.tls.ca_file"], mqtt_live=True) == (
        ["mqtt.host", "mqtt.tls.ca_file"],
        [],
    )
    assert split_live(["mqtt.enabled", "mqtt.host"], mqtt_live=True) == (
        [],
        ["mqtt.enabled", "mqtt.host"],
    )
    old = BirddConfig.model_validate({"mqtt": {"enabled": True}})
    new = BirddConfig.model_validate({"mqtt": {"enabled": True, "host": "hub", "port": 1884}})
    assert applied_config(old, new, ["mqtt.host", "mqtt.port"]).mqtt == new.mqtt


def test_applied_config_takes_only_the_live_keys() -> None:
    old = BirddConfig()
    new = BirddConfig.model_validate(
        {"postprocess": {"min_confidence": 0.7, "max_event_s": 30}, "station": {"id": "other"}}
    )
    applied = applied_config(old, new, ["postprocess.min_confidence"])
    assert applied.postprocess.min_confidence == 0.7
    assert applied.postprocess.max_event_s == old.postprocess.max_event_s
    assert applied.station.id == old.station.id


def test_an_unreadable_password_file_keeps_the_old_connection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Checked before the running connection is stopped: MQTT goes on as it was."""
    path, db = tmp_path / "config.yaml", tmp_path / "db.sqlite"
    path.write_text(f"mqtt: {{enabled: true}}\nstorage: {{db: {db}}}\n")
    reload = reloader(path, {}, [])
    publisher = MqttPublisher(reload.config)
    reload.reconnect = publisher.reconnect
    login = f"{{enabled: true, username: u, password_file: {tmp_path / 'missing'}}}"
    path.write_text(f"mqtt: {login}\nstorage: {{db: {db}}}\n")
    reload.reload()
    assert reload.config.mqtt.password_file is None
    assert publisher.config.password_file is None
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "mqtt.password_file" in errors[0], errors


def test_the_clips_budget_goes_to_the_housekeeping(tmp_path: Path) -> None:
    keys = ["clips.max_total_mb", "clips.keep_per_species_day", "clips.dir"]
    assert split_live(keys, mqtt_live=False) == (keys[:2], keys[2:])
    path = tmp_path / "config.yaml"
    path.write_text("clips: {enabled: true, dir: /tmp/c, max_total_mb: 100}\n")
    reload = reloader(path, {}, [])
    keeper = Housekeeping.from_config(reload.config)
    reload.rebudget = keeper.rebudget
    path.write_text("clips: {enabled: true, dir: /tmp/d, max_total_mb: 50, max_age_days: 7}\n")
    reload.reload()
    assert keeper.budget == Budget(50_000_000, 7 * 86400.0, keeper.budget.keep_per_species_day)
    assert reload.config.clips.dir == Path("/tmp/c") and reload.config.clips.max_age_days == 7


def reloader(path: Path, overrides: dict, applied: List[PostprocessConfig]) -> ConfigReload:
    def load() -> BirddConfig:
        return load_config(path, overrides)

    return ConfigReload(load(), load, applied.append)


def test_mqtt_changes_reconnect_with_the_new_block(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("mqtt: {enabled: true}\n")
    reconnected: List[BirddConfig] = []
    reload = reloader(path, {}, [])
    reload.reconnect = reconnected.append
    path.write_text("mqtt: {enabled: true, topic_prefix: moved}\n")
    reload.reload()
    assert [config.mqtt.topic_prefix for config in reconnected] == ["moved"]


def test_a_flag_still_wins_over_the_reloaded_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("postprocess: {min_confidence: 0.3, sensitivity: 1.0}\n")
    applied: List[PostprocessConfig] = []
    reload = reloader(path, {"postprocess.min_confidence": 0.5}, applied)
    path.write_text("postprocess: {min_confidence: 0.9, sensitivity: 1.25}\n")
    reload.reload()
    assert [(p.min_confidence, p.sensitivity) for p in applied] == [(0.5, 1.25)]
    assert reload.config.postprocess.sensitivity == 1.25


def test_an_invalid_config_is_one_error_and_the_old_one_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("postprocess: {min_confidence: 0.3}\n")
    applied: List[PostprocessConfig] = []
    reload = reloader(path, {}, applied)
    path.write_text("postprocess: {min_confidence: 0.3}\noutput: {format: xml}\n")
    reload.reload()
    assert applied == []
    assert reload.config.output.format != "xml"
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert "output.format | 'xml' | allowed: " in errors[0], errors


def test_restart_keys_are_named_and_kept_old(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("audio: {inputs: ['-']}\n")
    applied: List[PostprocessConfig] = []
    reload = reloader(path, {}, applied)
    path.write_text("audio: {inputs: ['-', 'USB']}\npostprocess: {min_confidence: 0.6}\n")
    reload.reload()
    assert [p.min_confidence for p in applied] == [0.6]
    assert reload.config.audio.inputs == ["-"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "reload: audio.inputs need a restart (systemctl restart birdd); running on the old "
        "values for those"
    ]


# ------------------------------------------------------- system: a real daemon on stdin, SIGHUP


@pytest.mark.system
def test_sighup_applies_a_new_threshold_without_a_gap(birdnet_model: Path, tmp_path: Path) -> None:
    """The second play follows the new threshold; systemd hears RELOADING=1, then READY=1."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(tmp_path / "notify"))
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")}
        reload_and_play_again(tmp_path, env)
        told = []
        systemd.settimeout(0.1)
        with contextlib.suppress(socket.timeout):
            while True:
                told.append(systemd.recv(4096).decode())
    states = [m.split("\n")[0] for m in told if not m.startswith("STATUS=")]
    assert states == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"], told


def reload_and_play_again(tmp_path: Path, env: dict) -> None:
    daemon, config, db, play = first_play(tmp_path, env)
    first = daemon.rows()
    threshold = threshold_between([row["confidence"] for row in first])
    write_config(config, db, threshold)
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for("the reload line", lambda: any("reload: changed" in e for e in daemon.err))
    daemon.feed(play)
    assert daemon.stop(None) == 0, "".join(daemon.err)
    rows = daemon.rows()
    second = [row for row in rows if row["offset_start"] >= PLAY_S]
    assert second and all(row["confidence"] >= threshold for row in second)
    assert heard(second, 1) == heard([r for r in first if r["confidence"] >= threshold], 0)
    assert len(second) < len(first) == 18
    assert gaps(db) == 0
    reloads = [line for line in daemon.err if "reload:" in line]
    assert len(reloads) == 1 and "applied postprocess.min_confidence" in reloads[0], reloads


@pytest.mark.system
def test_sighup_with_a_broken_config_keeps_the_old_one(birdnet_model: Path, tmp_path: Path) -> None:
    daemon, config, db, play = first_play(tmp_path)
    write_config(config, db, 1.5)
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for("the refusal", lambda: any("reload refused" in e for e in daemon.err))
    daemon.feed(play)
    daemon.wait_for("the second play's 18 rows", lambda: len(daemon.rows()) >= 36)
    assert daemon.stop(signal.SIGTERM) == 0, "".join(daemon.err)
    rows = daemon.rows()
    assert heard(rows, 1) == heard(rows, 0) and len(rows) == 36
    refused = [line for line in daemon.err if "reload" in line]
    assert len(refused) == 1, refused
    assert "postprocess.min_confidence | 1.5 | " in refused[0], refused
    assert gaps(db) == 0


@pytest.mark.system
def test_sighup_reconnects_mqtt_and_loses_nothing(
    broker, birdnet_model: Path, tmp_path: Path
) -> None:
    """A new topic prefix: the first play's detections went to the old topic, the second
    play's to the new one, every stored row was published once."""
    mqtt = {"enabled": True, "host": "127.0.0.1", "port": broker.port}
    station = {"id": "field"}
    with Subscriber(broker, "#") as everything:
        daemon, config, db, play = first_play(tmp_path, mqtt=mqtt, station=station)
        moved = {**mqtt, "topic_prefix": "moved"}  # birdd/field → moved
        write_config(config, db, 0.4, mqtt=moved, station=station)
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for("the reload line", lambda: any("reload: changed" in e for e in daemon.err))
        daemon.feed(play)
        assert daemon.stop(None) == 0, "".join(daemon.err)
        everything.wait_for(lambda ms: ms[-1].topic == "moved/status", timeout=10)
        messages = everything.messages
    ids = {
        topic: [json.loads(m.payload)["id"] for m in messages if m.topic == topic]
        for topic in ("birdd/field/detections", "moved/detections")
    }
    with sqlite3.connect(str(db)) as conn:
        stored = [row[0] for row in conn.execute("SELECT id FROM detections ORDER BY rowid")]
        unpublished = conn.execute("SELECT COUNT(*) FROM detections WHERE published_at IS NULL")
        assert unpublished.fetchone()[0] == 0
    assert len(ids["birdd/field/detections"]) == len(ids["moved/detections"]) == 18
    assert ids["birdd/field/detections"] + ids["moved/detections"] == stored
    assert any("applied mqtt.topic_prefix" in line for line in daemon.err), daemon.err
    assert gaps(db) == 0
