"""The MQTT broker: a TCP connect and an MQTT CONNECT with the station's credentials and TLS,
each way of failing said apart (nobody listens, no answer, TLS, login refused)."""

from __future__ import annotations

import os
import socket
import ssl
import time
from typing import Any, Dict, List

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from birdd.daemon.app.doctor.base import Context, Result, fail, ok
from birdd.daemon.mqtt.client import AUTH_REFUSALS, apply_credentials
from birdd.daemon.mqtt.config import MqttConfig

TIMEOUT_S = 5.0
CREDENTIALS_FIX = "check mqtt.username and the password (mqtt.password_env or mqtt.password_file)"
TLS_FIX = "check mqtt.tls (ca_file, cert_file, key_file) and that the port is the TLS listener"


def check_broker(ctx: Context) -> List[Result]:
    assert ctx.config is not None
    config = ctx.config.mqtt
    if not config.enabled:
        return [ok("broker", "MQTT is off (mqtt.enabled: false): detections stay on the station")]
    return [connect(config, TIMEOUT_S)]


def connect(config: MqttConfig, timeout_s: float) -> Result:
    """Connect once, wait for the CONNACK, disconnect. The client id is the doctor's own: the
    station's would push a running birdd off the broker."""
    address = f"{config.host}:{config.resolved_port()} (MQTT {config.protocol})"
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"birdd-doctor-{os.getpid()}",
        protocol=paho.MQTTv5 if config.protocol == "5" else paho.MQTTv311,
    )
    client.connect_timeout = timeout_s
    try:
        apply_credentials(client, config)
    except (OSError, ssl.SSLError, ValueError) as exc:
        return fail(
            "broker", f"{address}: cannot load the credentials or TLS files ({exc})", TLS_FIX
        )
    answer: Dict[str, Any] = {}
    client.on_connect = lambda c, userdata, flags, reason, properties: answer.update(r=reason)
    try:
        client.connect(config.host, config.resolved_port(), keepalive=config.keepalive_s)
        return _wait_for_connack(client, answer, address, timeout_s, _missing_password(config))
    except (OSError, ssl.SSLError) as exc:
        return _connect_error(exc, address, timeout_s)
    finally:
        client.disconnect()


def _missing_password(config: MqttConfig) -> str:
    """What a refused login may be down to: a user name and no password found."""
    if config.username and not config.password():
        return f": no password for {config.username} in ${config.password_env} or a file"
    return ""


def _wait_for_connack(
    client: paho.Client, answer: Dict[str, Any], address: str, timeout_s: float, no_password: str
) -> Result:
    deadline = time.monotonic() + timeout_s
    while "r" not in answer and time.monotonic() < deadline:
        if client.loop(timeout=0.1) != paho.MQTT_ERR_SUCCESS and "r" not in answer:
            return fail(
                "broker",
                f"{address}: the broker closed the connection before accepting us",
                "a TLS port needs mqtts:// (mqtt.tls); else see the broker's log",
            )
    if "r" not in answer:
        return fail("broker", f"{address}: no CONNACK in {timeout_s:g} s", "see the broker's log")
    reason = answer["r"]
    if not reason.is_failure:
        return ok("broker", f"{address}: connected and accepted")
    if reason.value in AUTH_REFUSALS:
        return fail("broker", f"{address}: login refused ({reason}){no_password}", CREDENTIALS_FIX)
    return fail(
        "broker", f"{address}: connection refused by the broker ({reason})", "see the broker's log"
    )


def _connect_error(exc: OSError, address: str, timeout_s: float) -> Result:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return fail(
            "broker",
            f"{address}: TLS error: certificate verify failed: {exc.verify_message}",
            TLS_FIX,
        )
    if isinstance(exc, ssl.SSLError):
        return fail("broker", f"{address}: TLS error: {exc.reason or exc}", TLS_FIX)
    if isinstance(exc, ConnectionRefusedError):
        return fail(
            "broker",
            f"{address}: connection refused (nobody listens on that port)",
            "start the broker (systemctl status mosquitto) or correct mqtt.host and mqtt.port",
        )
    if isinstance(exc, socket.gaierror):
        return fail("broker", f"{address}: unknown host ({exc.strerror})", "correct mqtt.host")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return fail(
            "broker",
            f"{address}: no answer in {timeout_s:g} s",
            "check the network path and firewall to the broker",
        )
    return fail("broker", f"{address}: unreachable ({exc.strerror or exc})", "check the network")
