"""``birdd doctor`` against real parts: the installed BirdNET, real mosquitto brokers (plain,
with a password file, with TLS), a private PulseAudio server playing a recording or nothing,
and real folders. A healthy station exits 0; each broken part is its own named FAIL line with
its fix, and exit 1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Tuple

import yaml
from birdd_testing import THRUSH, recording, run_birdd
from broker import free_port

from birdd.daemon.app.doctor.broker import connect
from birdd.daemon.mqtt.config import MqttConfig


def station_config(tmp_path: Path, **sections: Any) -> Path:
    """A config file with a data folder in ``tmp_path`` and the given sections over it."""
    body: Dict[str, Any] = {"storage": {"db": str(tmp_path / "data" / "birdd.sqlite")}}
    body.update(sections)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def doctor(config: Path, *flags: str, **kwargs: Any) -> Tuple[subprocess.CompletedProcess, List]:
    """``birdd doctor --config CONFIG --json FLAGS`` in a fresh process: the result and its
    checks as (status, check, detail, fix) tuples."""
    result = run_birdd("doctor", "--config", str(config), "--json", *flags, timeout=120, **kwargs)
    assert result.stdout, result.stderr
    checks = json.loads(result.stdout)["checks"]
    return result, [(c["status"], c["check"], c["detail"], c["fix"]) for c in checks]


def named(checks: List, check: str) -> List:
    return [line for line in checks if line[1] == check]


def test_a_healthy_station_passes(tmp_path, pulse, broker, birdnet_model):
    mqtt = {"enabled": True, "host": "127.0.0.1", "port": broker.port}
    config = station_config(tmp_path, audio={"inputs": ["pulse"]}, mqtt=mqtt)
    pulse.play(recording(THRUSH))  # 30 s of forest: doctor records 2 s of it
    result, checks = doctor(config, env=pulse.env)
    assert result.returncode == 0, result.stdout
    assert {status for status, *_ in checks} <= {"ok", "warn"}, result.stdout
    expected = ["config", "audio", "audio level", "runtime", "gpu", "model", "model sha256"]
    expected += ["model load", "broker", "disk", "clock", "state dir", "database"]
    assert sorted({c for _, c, *_ in checks}) == sorted(expected)
    (level,) = named(checks, "audio level")
    assert level[0] == "ok" and level[2].startswith("pulse: RMS "), level
    assert named(checks, "broker")[0][2].endswith("connected and accepted")
    assert "scores a window of silence (6522 classes)" in named(checks, "model load")[0][2]
    assert not (tmp_path / "data").exists(), "doctor only looks: it creates no folder"


def test_a_broken_station_fails_with_each_fix(tmp_path, pulse):
    """A missing model, no broker on the port, a data folder under a file, a silent mic."""
    (tmp_path / "afile").write_text("a file where the data folder should be")
    config = station_config(
        tmp_path,
        audio={"inputs": ["pulse"]},
        engine={"model": str(tmp_path / "gone.tflite")},
        mqtt={"enabled": True, "host": "127.0.0.1", "port": free_port()},
        storage={"db": str(tmp_path / "afile" / "data" / "birdd.sqlite")},
    )
    result, checks = doctor(config, env=pulse.env)  # nothing plays: the monitor is all zeros
    assert result.returncode == 1, result.stdout
    failed = {check: (detail, fix) for status, check, detail, fix in checks if status == "FAIL"}
    assert sorted(failed) == ["audio level", "broker", "model", "state dir"], result.stdout
    assert "digital silence, a dead microphone" in failed["audio level"][0]
    assert "gone.tflite not found" in failed["model"][0]
    assert "birdd models install birdnet" in failed["model"][1]
    assert "connection refused (nobody listens on that port)" in failed["broker"][0]
    assert "start the broker" in failed["broker"][1]
    assert "afile is a file" in failed["state dir"][0]


def test_a_replaced_model_and_a_wrong_password_fail(tmp_path, broker_factory, birdnet_model):
    model = tmp_path / "model" / birdnet_model.name
    model.parent.mkdir()
    shutil.copyfile(birdnet_model, model)
    shutil.copyfile(birdnet_model.with_suffix(".json"), model.with_suffix(".json"))
    with model.open("r+b") as file:  # one byte changed: what a bad copy or SD card does
        file.seek(4096)
        byte = file.read(1)
        file.seek(4096)
        file.write(bytes([byte[0] ^ 0xFF]))
    locked = broker_factory("password")
    mqtt = {"enabled": True, "host": "127.0.0.1", "port": locked.port, "username": locked.user}
    config = station_config(tmp_path, engine={"model": str(model)}, mqtt=mqtt)
    env = {**os.environ, "BIRDD_MQTT_PASSWORD": "not-the-password"}
    result, checks = doctor(config, "--skip", "audio", env=env)
    assert result.returncode == 1, result.stdout
    failed = {check: (detail, fix) for status, check, detail, fix in checks if status == "FAIL"}
    assert sorted(failed) == ["broker", "model sha256"], result.stdout
    assert "its sidecar says" in failed["model sha256"][0]
    assert "birdd models install" in failed["model sha256"][1]
    assert "login refused" in failed["broker"][0] and "mqtt.username" in failed["broker"][1]
    assert not named(checks, "model load"), "a model that fails its hash is not loaded"


def test_broker_failures_are_told_apart(broker_factory, monkeypatch):
    """TLS against the wrong CA, plain MQTT on a TLS port, the right credentials, and a user
    name with no password anywhere."""
    tls = broker_factory("tls")
    assert tls.certs is not None
    base = {"enabled": True, "host": "127.0.0.1", "port": tls.port}
    wrong_ca = MqttConfig(**base, tls={"ca_file": tls.certs.other_ca_file})
    outcome = connect(wrong_ca, 5.0)
    assert outcome.status == "FAIL" and "TLS error: certificate verify failed" in outcome.detail
    plain = connect(MqttConfig(**base), 5.0)
    assert plain.status == "FAIL" and "closed the connection" in plain.detail, plain
    right = connect(MqttConfig(**base, tls={"ca_file": tls.certs.ca_file}), 5.0)
    assert right.status == "ok", right
    locked = broker_factory("password")
    monkeypatch.delenv("BIRDD_MQTT_PASSWORD", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    config = MqttConfig(enabled=True, host="127.0.0.1", port=locked.port, username=locked.user)
    refused = connect(config, 5.0)
    assert refused.status == "FAIL" and "login refused" in refused.detail
    assert "no password for birdd in $BIRDD_MQTT_PASSWORD" in refused.detail
