"""The test broker itself: each listener mode with a real paho client, and stop/restart."""

from __future__ import annotations

import socket
import threading

import paho.mqtt.client as mqtt
import pytest
from broker import Subscriber
from paho.mqtt.enums import CallbackAPIVersion


def connect_result(client: mqtt.Client, port: int, timeout: float = 5.0) -> str:
    """Connect and wait for the CONNACK: 'Success', the broker's refusal, or the socket error."""
    outcome = {}
    done = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):
        outcome["result"] = str(reason_code)
        done.set()

    def on_disconnect(client, userdata, flags, reason_code, properties):
        outcome.setdefault("result", f"disconnected: {reason_code}")
        done.set()

    client.on_connect, client.on_disconnect = on_connect, on_disconnect
    client.reconnect_delay_set(0.05, 0.1)  # loop_stop() waits out paho's reconnect delay
    try:
        client.connect("127.0.0.1", port, keepalive=10)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    client.loop_start()
    try:
        assert done.wait(timeout), "no CONNACK and no disconnect"
    finally:
        client.disconnect()
        client.loop_stop()
    return outcome["result"]


def round_trip(broker, topic: str = "t/x", payload: bytes = b"hello") -> None:
    with Subscriber(broker, "t/#") as subscriber:
        publisher = broker.client()
        publisher.connect("127.0.0.1", broker.port)
        publisher.loop_start()
        publisher.publish(topic, payload, qos=1).wait_for_publish(5)
        publisher.disconnect()
        publisher.loop_stop()
        received = subscriber.wait_for(lambda messages: len(messages) >= 1, timeout=5)
    assert received[0].topic == topic and received[0].payload == payload


def test_plain_broker_delivers_and_keeps_retained(broker):
    assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
    round_trip(broker)
    publisher = broker.client()
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    publisher.publish("t/status", b"online", qos=1, retain=True).wait_for_publish(5)
    publisher.disconnect()
    publisher.loop_stop()
    with Subscriber(broker, "t/status") as late:
        got = late.wait_for(lambda messages: len(messages) == 1, timeout=5)
    assert got[0].retain and got[0].payload == b"online"
    assert "New client connected" in broker.log_text()


def test_password_broker_refuses_wrong_password_and_anonymous(broker_factory):
    broker = broker_factory("password")
    round_trip(broker)
    wrong = mqtt.Client(CallbackAPIVersion.VERSION2)
    wrong.username_pw_set(broker.user, "wrong")
    assert connect_result(wrong, broker.port) == "Not authorized"
    anonymous = mqtt.Client(CallbackAPIVersion.VERSION2)
    assert connect_result(anonymous, broker.port) == "Not authorized"


def test_tls_broker_checks_the_ca(broker_factory):
    broker = broker_factory("tls")
    assert broker.url.startswith("mqtts://127.0.0.1:")
    round_trip(broker)
    stranger = mqtt.Client(CallbackAPIVersion.VERSION2)
    stranger.tls_set(ca_certs=str(broker.certs.other_ca_file))
    result = connect_result(stranger, broker.port)
    assert result.startswith("SSLCertVerificationError") and "certificate verify failed" in result
    plain = mqtt.Client(CallbackAPIVersion.VERSION2)
    assert connect_result(plain, broker.port).startswith("disconnected")
    assert "wrong version number" in broker.log_text()


def test_mutual_tls_needs_a_client_certificate(broker_factory):
    broker = broker_factory("tls", require_certificate=True)
    round_trip(broker)
    no_cert = broker.configure(mqtt.Client(CallbackAPIVersion.VERSION2), client_cert=False)
    assert connect_result(no_cert, broker.port).startswith("disconnected")
    assert "peer did not return a certificate" in broker.log_text()


def test_stop_and_restart_on_the_same_port(broker):
    port = broker.port
    with Subscriber(broker, "t/#") as subscriber:
        broker.stop()
        assert not broker.running
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        broker.restart()
        assert broker.port == port and broker.running
        subscriber.wait_subscribed(2, timeout=5)  # it reconnected and subscribed again
        round_trip(broker, "t/after", b"back")
        subscriber.wait_for(lambda ms: any(m.topic == "t/after" for m in ms), timeout=5)
    broker.kill()
    assert not broker.running
    assert broker.log_text().count("running") >= 2  # two "mosquitto version … running" lines
