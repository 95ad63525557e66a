"""A refused login and a failed TLS handshake: one clear line each, retries with backoff, no
traceback, and the run itself completes with its rows kept for later. Then the same rows are
delivered with the right password, and over mutual TLS. Real mosquitto, real certificates."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from birdd_testing import THRUSH, recording, run_birdd
from broker import Mosquitto, Subscriber

# The retries counted below happen while the run waits drain_timeout_s for the broker: 3 s
# leaves room for several even on a loaded machine (each TLS handshake failure takes time).
RETRY_FAST = "  reconnect_min_s: 0.1\n  reconnect_max_s: 0.3\n  drain_timeout_s: 3\n"


def write_config(tmp_path: Path, mqtt_lines: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text("station: {id: garden}\nmqtt:\n" + RETRY_FAST + mqtt_lines)
    return path


def simulate(tmp_path: Path, url: str, config: Path, password: str = ""):
    """`birdd --simulate` of the thrush recording per window at 0.5: 16 detections."""
    env = {**os.environ, "BIRDD_MQTT_PASSWORD": password}
    return run_birdd(
        *("--simulate", str(recording(THRUSH)), "--per-window", "--format", "jsonl"),
        *("--output", "/dev/null"),
        *("--db", str(tmp_path / "db.sqlite"), "--config", str(config), "--mqtt", url),
        env=env,
        timeout=120,
    )


def publish(tmp_path: Path, url: str, config: Path, password: str = ""):
    env = {**os.environ, "BIRDD_MQTT_PASSWORD": password}
    return run_birdd(
        *("publish", "--db", str(tmp_path / "db.sqlite"), "--config", str(config)),
        *("--mqtt", url, "--timeout", "10"),
        env=env,
    )


def unpublished(tmp_path: Path) -> int:
    with contextlib.closing(sqlite3.connect(str(tmp_path / "db.sqlite"))) as conn:
        query = "SELECT COUNT(*) FROM detections WHERE published_at IS NULL"
        return conn.execute(query).fetchone()[0]


def mqtt_lines(stderr: str) -> list:
    return [line for line in stderr.splitlines() if line.startswith("birdd: mqtt:")]


def connection_attempts(broker: Mosquitto, marker: str) -> int:
    """Each refused attempt logs ``marker`` once: a TLS failure as "OpenSSL Error[0]: ..." when
    the handshake fails in the read loop, or as "Client connection from ... failed: ...." when it
    fails at accept (which one depends on timing)."""
    return broker.log_text().count(marker)


def test_a_refused_login_is_one_line_retried_and_the_rows_wait(
    birdnet_model, broker_factory, tmp_path
):
    broker = broker_factory("password")
    config = write_config(tmp_path, "")
    url = f"mqtt://{broker.user}@127.0.0.1:{broker.port}"
    result = simulate(tmp_path, url, config, password="wrong")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    refused, left = mqtt_lines(result.stderr)
    assert "login refused: Not authorized" in refused and "password" in refused
    assert "stay in the outbox" in left
    assert connection_attempts(broker, "not authorised") >= 3  # kept retrying, logged once
    rows = unpublished(tmp_path)
    assert rows >= 3
    with Subscriber(broker, "birdd/#") as hub:
        delivered = publish(tmp_path, url, config, password=broker.password)
        assert delivered.returncode == 0, delivered.stderr
        hub.wait_for(lambda ms: len(ms) == rows, timeout=5)
    assert unpublished(tmp_path) == 0


def test_a_tls_failure_is_one_line_and_mutual_tls_then_delivers(
    birdnet_model, broker_factory, tmp_path
):
    broker = broker_factory("tls", require_certificate=True)
    certs = broker.certs
    client_cert = f"    cert_file: {certs.client_cert}\n    key_file: {certs.client_key}\n"
    stranger = write_config(tmp_path, f"  tls:\n    ca_file: {certs.other_ca_file}\n" + client_cert)
    result = simulate(tmp_path, broker.url, stranger)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = mqtt_lines(result.stderr)
    assert len(lines) == 2, result.stderr  # the failure once, then the rows left in the outbox
    failed, _ = lines
    assert "tls error: certificate verify failed" in failed and "mqtt.tls" in failed
    assert connection_attempts(broker, "alert unknown ca") >= 3
    rows = unpublished(tmp_path)
    assert rows >= 3
    trusted = write_config(
        tmp_path, f"  tls:\n    ca_file: {certs.ca_file}\n    insecure: true\n" + client_cert
    )
    with Subscriber(broker, "birdd/#") as hub:
        delivered = publish(tmp_path, broker.url, trusted)
        assert delivered.returncode == 0, delivered.stderr
        hub.wait_for(lambda ms: len(ms) == rows, timeout=5)
    assert "mqtt.tls.insecure is on" in delivered.stderr
    assert unpublished(tmp_path) == 0


def test_missing_certificate_files_are_an_error_before_the_run(birdnet_model, tmp_path):
    config = write_config(tmp_path, f"  tls:\n    ca_file: {tmp_path / 'nowhere.pem'}\n")
    result = simulate(tmp_path, "mqtts://127.0.0.1:1", config)
    assert result.returncode == 2
    (error,) = [line for line in result.stderr.splitlines() if "error" in line]
    assert error.startswith("birdd: error: mqtt.tls: cannot load") and "No such file" in error
    assert not (tmp_path / "db.sqlite").exists()


def test_plain_mqtt_to_a_tls_port_says_so_once(birdnet_model, broker_factory, tmp_path):
    broker = broker_factory("tls")
    plain_url = broker.url.replace("mqtts://", "mqtt://")
    result = simulate(tmp_path, plain_url, write_config(tmp_path, ""))
    assert result.returncode == 0 and "Traceback" not in result.stderr
    closed, _ = mqtt_lines(result.stderr)
    assert "closed by the broker before accepting us" in closed and "mqtts://" in closed
