"""The broker connection: paho's network thread, the status topic, reconnects and their state.

paho reconnects by itself from its loop thread (``connect_async`` + ``loop_start``). We choose
each wait: before every retry, ``on_disconnect`` / ``on_connect_fail`` set paho's delay to the
next value of a capped exponential backoff with jitter (``reconnect_delay_set(d, d)``), so that
stations restarted together by a power cut do not hammer the broker in step.

Every failure is one line in the log when the state changes (connected, unreachable, login
refused, TLS error, connection lost), never one per retry, and the state is in ``…/stats``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
import sys
import threading
from typing import Any, Callable, Dict, List, Optional

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from birdd.daemon.mqtt.config import MqttConfig
from birdd.daemon.mqtt.topics import Topics
from birdd.daemon.netblock import SANDBOX_HINT, blocked_here
from birdd.daemon.retry import Backoff

log = logging.getLogger("birdd")

ONLINE, OFFLINE = b"online", b"offline"
AUTH_REFUSALS = {0x86, 0x87, 4, 5}
"""CONNACK codes for a refused login: MQTT 5 bad user name or password / not authorised, and
their MQTT 3.1.1 return codes."""
ACCEPTED = (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN)
"""``publish`` results that keep the message: paho sends it (again) once connected."""


class Connection:
    """One MQTT client for the process. ``announce`` publishes ``online`` (retained) on every
    connect, sets ``offline`` as the last will, and ``go_offline`` says it on a clean stop."""

    def __init__(
        self, config: MqttConfig, topics: Topics, client_id: str, announce: bool = True
    ) -> None:
        self.config, self.topics, self.announce = config, topics, announce
        self.address = f"{config.host}:{config.resolved_port()}"
        self.state = "connecting"
        self.receive_maximum = 65535
        self.on_ack: Callable[[int, Optional[str]], None] = lambda mid, failure: None
        """Called from the network thread with each PUBACK: the mid, and the broker's reason
        when it refused the message (MQTT 5), else None."""
        self.on_connected: List[Callable[[], None]] = []
        self._backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s)
        self._state_lock = threading.Lock()
        self._closing = False
        self._refused = False
        self._client = self._make_client(client_id)

    @property
    def connected(self) -> bool:
        return self._client.is_connected()

    def start(self) -> None:
        """Connect in paho's network thread; a broker that is down is retried, never fatal."""
        if self.config.tls is not None and self.config.tls.insecure:
            log.warning(
                "mqtt.tls.insecure is on: the broker's certificate is not checked against its "
                "host name, so anyone on the network path can pose as the broker"
            )
        _reconnect_after(self._client, self.config.reconnect_min_s)
        host, port, keepalive = (
            self.config.host,
            self.config.resolved_port(),
            self.config.keepalive_s,
        )
        if self.config.protocol == "5":
            self._client.connect_async(host, port, keepalive, clean_start=True)
        else:
            self._client.connect_async(host, port, keepalive)
        self._client.loop_start()

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> Optional[int]:
        """Queue a message; return its mid, or None when paho refused it."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        return info.mid if info.rc in ACCEPTED else None

    def go_offline(self, timeout_s: float) -> None:
        """Publish ``offline`` ourselves (a clean stop sends no will) and wait for its PUBACK."""
        if not (self.announce and self.connected):
            return
        info = self._client.publish(self.topics.status, OFFLINE, qos=1, retain=True)
        # If the connection drops meanwhile, the broker sends the will instead.
        with contextlib.suppress(RuntimeError, ValueError):
            info.wait_for_publish(timeout_s)

    def close(self) -> None:
        """Disconnect. When connected, wait until paho's thread has sent the DISCONNECT; when
        not, that thread is waiting to retry and ends by itself within a second (it is a
        daemon thread), so the process does not wait for it."""
        self._closing = True
        connected = self.connected
        self._client.disconnect()
        if connected:
            self._client.loop_stop()
        self._set_state("stopped", None)

    def _make_client(self, client_id: str) -> paho.Client:
        config = self.config
        protocol = paho.MQTTv5 if config.protocol == "5" else paho.MQTTv311
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            clean_session=None if config.protocol == "5" else True,
        )
        client.max_inflight_messages_set(config.max_inflight)
        if self.announce:
            client.will_set(self.topics.status, OFFLINE, qos=1, retain=True)
        try:
            apply_credentials(client, config)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"mqtt.tls: cannot load the certificates or key: {exc}") from None
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if self._closing:
            client.disconnect()  # a connect attempt that finished after close()
            return
        if reason.is_failure:
            code = reason.value
            refusal = "login refused" if code in AUTH_REFUSALS else "connection refused"
            self._set_state(f"{refusal}: {reason}", _refusal_hint(code))
            self._refused = True  # paho calls on_disconnect next: the state stays
            return
        self._backoff.reset()
        receive_maximum = getattr(properties, "ReceiveMaximum", None)
        self.receive_maximum = int(receive_maximum or 65535)
        if self.announce:
            client.publish(self.topics.status, ONLINE, qos=1, retain=True)
        self._set_state("connected", None)
        for callback in self.on_connected:
            callback()

    def _on_connect_fail(self, client, userdata) -> None:
        if self._closing:
            return  # an attempt paho's thread was making when close() came: not news
        # paho calls this from inside its ``except OSError`` block: the error is still current.
        error = sys.exc_info()[1]
        if isinstance(error, ssl.SSLError):
            hint = "check mqtt.tls (ca_file, cert_file, key_file)"
            self._set_state(f"tls error: {_tls_problem(error)}", hint)
        else:
            reason = getattr(error, "strerror", None) or str(error) or "no answer"
            hint = SANDBOX_HINT if blocked_here(error) else "detections wait in the outbox"
            self._set_state(f"unreachable: {reason}", hint)
        self._schedule_retry()

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        if self._closing:
            return
        if self._refused:
            self._refused = False
        elif self.state == "connected":
            self._set_state(f"connection lost: {reason}", "detections wait in the outbox")
        else:
            hint = "a TLS port needs mqtts:// or mqtt.tls"
            self._set_state(f"closed by the broker before accepting us: {reason}", hint)
        self._schedule_retry()

    def _on_publish(self, client, userdata, mid, reason, properties) -> None:
        self.on_ack(mid, str(reason) if reason.is_failure else None)

    def _schedule_retry(self) -> None:
        _reconnect_after(self._client, self._backoff.next())

    def _set_state(self, state: str, hint: Optional[str]) -> None:
        with self._state_lock:
            if state == self.state:
                return
            self.state = state
        if state == "connected":
            log.info("mqtt: connected to %s", self.address)
        elif hint is not None:
            log.warning("mqtt: %s: %s; %s, retrying with backoff", self.address, state, hint)


def _tls_problem(error: ssl.SSLError) -> str:
    """``certificate verify failed: self-signed certificate``, without OpenSSL's decorations."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {error.verify_message}"
    text = str(error.args[1]) if len(error.args) > 1 else str(error)
    return re.sub(r"^\[[^\]]*\]\s*|\s*\(_ssl\.c:\d+\)$", "", text)


def _refusal_hint(code: int) -> str:
    if code in AUTH_REFUSALS:
        return "check mqtt.username and the password (mqtt.password_env or mqtt.password_file)"
    return "check the broker's settings for this client"


def apply_credentials(client: paho.Client, config: MqttConfig) -> None:
    """User name, password and TLS on a paho client, for the station and for ``birdd listen``.

    The CA and client certificate load now, so a bad path fails at start (OSError/SSLError).
    """
    if config.username:
        client.username_pw_set(config.username, config.password())
    tls = config.tls
    if tls is None:
        return
    client.tls_set(
        ca_certs=str(tls.ca_file) if tls.ca_file else None,
        certfile=str(tls.cert_file) if tls.cert_file else None,
        keyfile=str(tls.key_file) if tls.key_file else None,
        cert_reqs=ssl.CERT_REQUIRED,
    )
    if tls.insecure:
        client.tls_insecure_set(True)


def persistent_client(client_id: str, protocol: str) -> paho.Client:
    """A subscriber whose session the broker keeps while it is away (its subscriptions and
    the QoS 1 messages for them), for the hub and ``birdd listen --client-id``.

    MQTT 3.1.1: clean session off. MQTT 5: clean start off and a session expiry, given at
    each connect by ``resume_session``. ``manual_ack``: the caller acknowledges a message
    (``client.ack``) once it has handled it, so one it never handled is sent again.
    """
    v5 = protocol == "5"
    return paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        clean_session=None if v5 else False,
        manual_ack=True,
    )


def resume_session(protocol: str, expiry_s: int, receive_maximum: int) -> Dict[str, Any]:
    """``connect`` / ``connect_async`` keyword arguments that resume a ``persistent_client``'s
    session: MQTT 5's clean start off, session expiry and receive maximum (how many messages
    the broker sends before an acknowledgement); nothing for 3.1.1, whose clean-session flag
    is the client's."""
    if protocol != "5":
        return {}
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = expiry_s
    properties.ReceiveMaximum = receive_maximum
    return {"clean_start": False, "properties": properties}


def _reconnect_after(client: paho.Client, delay_s: float) -> None:
    """paho's next reconnect waits ``delay_s`` (a float: its type hints say int, its loop
    sleeps on floats, and sub-second first retries matter)."""
    client.reconnect_delay_set(delay_s, delay_s)  # type: ignore[arg-type]
