"""A real mosquitto broker for the tests, and a real paho subscriber that records what it gets.

No mock anywhere: ``Mosquitto`` runs ``/usr/sbin/mosquitto`` on a free loopback port with a
generated config (plain, password or TLS listener; TLS certificates made here with the
``openssl`` command line), and ``Subscriber`` is an ordinary paho client.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, NamedTuple, Optional

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MODES = ("plain", "password", "tls")
START_TIMEOUT_S = 5.0
# Not "all": debug logs every PUBLISH, too much for a 100,000-message backlog.
LOG_TYPES = ("error", "warning", "notice", "information", "subscribe")


@dataclass(frozen=True)
class Certificates:
    """Test PKI: a CA, a server cert for 127.0.0.1/localhost, a client cert, an unrelated CA."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_file: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _make_ca(directory: Path, name: str) -> None:
    _openssl(
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-nodes", "-days", "2", "-keyout", f"{name}.key", "-out", f"{name}.crt"),
        *("-subj", f"/CN=birdd test {name}"),
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        cwd=directory,
    )


def _make_leaf(directory: Path, name: str, common_name: str, extensions: str) -> None:
    """A key and a certificate for ``name`` signed by ``ca``."""
    (directory / f"{name}.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n" + extensions
    )
    _openssl(
        *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
        *("-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={common_name}"),
        cwd=directory,
    )
    _openssl(
        *("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key"),
        *("-CAcreateserial", "-days", "2", "-out", f"{name}.crt", "-extfile", f"{name}.ext"),
        cwd=directory,
    )


def make_certificates(directory: Path) -> Certificates:
    """Generate the test PKI into ``directory`` with the openssl CLI (EC keys: fast)."""
    directory.mkdir(parents=True, exist_ok=True)
    _make_ca(directory, "ca")
    _make_ca(directory, "other-ca")
    _make_leaf(
        directory,
        "server",
        "127.0.0.1",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    _make_leaf(directory, "client", "birdd-test-client", "extendedKeyUsage=clientAuth\n")
    return Certificates(
        ca_file=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
        other_ca_file=directory / "other-ca.crt",
    )


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def end_process(process: Optional[subprocess.Popen], sig: int) -> None:
    """Send ``sig`` to a child we started and reap it (SIGKILL if it lingers)."""
    if process is None or process.poll() is not None:
        return
    if sig != signal.SIGKILL:
        process.send_signal(signal.SIGCONT)  # a stopped process can't act on SIGTERM
    process.send_signal(sig)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def wait_for_port(port: int, alive: Callable[[], bool], timeout_s: float) -> bool:
    """Wait until 127.0.0.1:``port`` accepts a connection; False once ``alive()`` is False or
    ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


class Mosquitto:
    """One mosquitto process on 127.0.0.1:``port``; ``restart()`` keeps the port and config.

    Persistence is off by default, so a restart loses sessions, queued and retained messages,
    as a broker replaced after an outage would; ``persistent=True`` keeps them in the work
    folder across a ``stop()`` / ``start()`` (saved at shutdown and every second), as a
    production broker for a hub is set up.
    """

    def __init__(
        self,
        workdir: Path,
        mode: str = "plain",
        require_certificate: bool = False,
        persistent: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: one of {MODES}")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.mode = mode
        self.require_certificate = require_certificate
        self.persistent = persistent
        self.port = free_port()
        self.user: Optional[str] = None
        self.password: Optional[str] = None
        self.certs: Optional[Certificates] = None
        self.log_path = self.workdir / "mosquitto.log"
        self._process: Optional[subprocess.Popen] = None
        self.config_path = self._write_config()

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.mode == "tls" else "mqtt"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _write_config(self) -> Path:
        lines = [f"listener {self.port} 127.0.0.1", "log_dest stderr"]
        if self.persistent:
            lines += ["persistence true", f"persistence_location {self.workdir}/"]
            lines += ["autosave_interval 1", "max_queued_messages 100000"]
        else:
            lines.append("persistence false")
        lines += [f"log_type {kind}" for kind in LOG_TYPES]
        if os.geteuid() == 0:  # else mosquitto becomes user 'mosquitto', who can't read our files
            lines.append("user root")
        if self.mode == "password":
            lines += ["allow_anonymous false", f"password_file {self._write_passwords()}"]
        else:
            lines.append("allow_anonymous true")
        if self.mode == "tls":
            self.certs = make_certificates(self.workdir / "pki")
            lines += [
                f"cafile {self.certs.ca_file}",
                f"certfile {self.certs.server_cert}",
                f"keyfile {self.certs.server_key}",
                f"require_certificate {str(self.require_certificate).lower()}",
            ]
        path = self.workdir / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _write_passwords(self) -> Path:
        self.user, self.password = "birdd", "s3cret-for-tests"
        path = self.workdir / "passwords"
        command = ["mosquitto_passwd", "-b", "-c", str(path), self.user, self.password]
        subprocess.run(command, check=True, capture_output=True, timeout=30)
        return path

    def start(self) -> Mosquitto:
        """Start the broker and wait until its port accepts connections."""
        if self.running:
            return self
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        process = self._process
        if wait_for_port(self.port, lambda: process.poll() is None, START_TIMEOUT_S):
            return self
        self.kill()
        raise RuntimeError(f"mosquitto did not start on port {self.port}:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM and wait: mosquitto closes every connection (the clients see an outage)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        self._end(signal.SIGKILL)

    def _end(self, sig: int) -> None:
        process, self._process = self._process, None
        end_process(process, sig)

    def restart(self) -> Mosquitto:
        self.stop()
        return self.start()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, text: str, timeout: float = 5.0, count: int = 1) -> None:
        """Wait until ``text`` shows ``count`` times in the log (the log spans restarts), say a
        subscription: ``" 1 birdd/+/status"``."""
        deadline = time.monotonic() + timeout
        while self.log_text().count(text) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the broker log:\n{self.log_tail()}")
            time.sleep(0.02)

    def configure(self, client: mqtt.Client, client_cert: bool = True) -> mqtt.Client:
        """Give a paho client this broker's credentials and TLS settings (the client cert only
        when ``client_cert`` and the broker asks for one)."""
        if self.user is not None:
            client.username_pw_set(self.user, self.password)
        if self.certs is not None:
            with_cert = client_cert and self.require_certificate
            client.tls_set(
                ca_certs=str(self.certs.ca_file),
                certfile=str(self.certs.client_cert) if with_cert else None,
                keyfile=str(self.certs.client_key) if with_cert else None,
            )
        return client

    def client(self, client_id: str = "") -> mqtt.Client:
        """A configured, unconnected paho client (MQTT 3.1.1, callback API v2)."""
        return self.configure(mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id))


class Message(NamedTuple):
    topic: str
    payload: bytes
    retain: bool


class Subscriber:
    """A real paho client on ``topic_filter`` collecting messages from its network thread.

    It subscribes again after every reconnect, so it survives ``broker.restart()``.
    """

    def __init__(self, broker: Mosquitto, topic_filter: str = "#", qos: int = 1) -> None:
        self.topic_filter, self.qos = topic_filter, qos
        self._messages: List[Message] = []
        self._changed = threading.Condition()
        self.subscriptions = 0
        self.client = broker.client()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 1)
        self.client.connect_async("127.0.0.1", broker.port, keepalive=10)
        self.client.loop_start()
        try:
            self.wait_subscribed(1, START_TIMEOUT_S)
        except AssertionError:
            self.close()
            raise

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe(self.topic_filter, self.qos)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._changed:
            self.subscriptions += 1
            self._changed.notify_all()

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        with self._changed:
            self._messages.append(Message(message.topic, message.payload, bool(message.retain)))
            self._changed.notify_all()

    @property
    def messages(self) -> List[Message]:
        with self._changed:
            return list(self._messages)

    def wait_for(
        self, predicate: Callable[[List[Message]], bool], timeout: float = 10.0
    ) -> List[Message]:
        """Wait until ``predicate(messages so far)`` holds; return those messages."""
        self._wait(lambda: predicate(list(self._messages)), timeout, "messages")
        return self.messages

    def wait_subscribed(self, count: int, timeout: float = 10.0) -> None:
        """Wait for the ``count``-th SUBACK: 1 at start, 2 after the first reconnect, …"""
        self._wait(lambda: self.subscriptions >= count, timeout, f"SUBACK #{count}")

    def _wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"subscriber on {self.topic_filter!r}: no {what} in {timeout} s "
                        f"({len(self._messages)} messages, {self.subscriptions} SUBACKs)"
                    )
                self._changed.wait(left)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
