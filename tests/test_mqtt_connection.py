"""The broker connection's state lines, against a loopback socket that fails the TLS
handshake on cue: one line per change of state, none for an attempt that fails after close."""

from __future__ import annotations

import logging
import socket
import threading

from birdd.daemon.mqtt.client import Connection
from birdd.daemon.mqtt.config import MqttConfig, TLSConfig
from birdd.daemon.mqtt.topics import Topics


def paho_threads(client_id: str) -> list:
    return [t for t in threading.enumerate() if t.name == f"paho-mqtt-client-{client_id}"]


def test_an_attempt_that_fails_after_close_says_nothing(caplog):
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(10)
        config = MqttConfig(
            enabled=True,
            host="127.0.0.1",
            port=server.getsockname()[1],
            tls=TLSConfig(),
            reconnect_min_s=0.05,
            reconnect_max_s=0.05,
        )
        connection = Connection(config, Topics(config, "garden"), "closing-test")
        with caplog.at_level(logging.INFO, logger="birdd"):
            connection.start()
            first, _ = server.accept()
            first.close()  # the handshake fails: said once
            second, _ = server.accept()  # the retry, held in its handshake
            connection.close()
            second.close()  # that attempt fails after close: not news
            for thread in paho_threads("closing-test"):
                thread.join(timeout=10)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("mqtt:")]
    assert len(lines) == 1, lines
    assert "tls error" in lines[0] and "mqtt.tls" in lines[0]
    assert connection.state == "stopped"
