"""Nothing is lost when the broker goes away, the network drops or the daemon is killed: a real
mosquitto, the real model on a real recording, and the real ``birdd`` processes.

The outage test's broker has persistence and its subscriber is ``birdd listen --client-id``, the
durable mode a hub uses: what reaches the broker while the subscriber is away is queued for it,
through the broker's restart, so the station is never held back. The daemon talks to the broker
through a TCP relay only to cut its connection without touching the broker (a bad network).
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

from birdd_testing import THRUSH, recording, run_birdd
from broker import Subscriber, free_port

FAST_RECONNECT = "mqtt: {reconnect_min_s: 0.1, reconnect_max_s: 0.5, drain_timeout_s: 10}\n"


class Relay:
    """A TCP relay from a loopback port to the broker: the daemon's network."""

    def __init__(self, target_port: int) -> None:
        self.target_port, self.port = target_port, free_port()
        self._server: Optional[socket.socket] = None
        self._links: List[socket.socket] = []
        self._lock = threading.Lock()

    def open(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()

    def close(self) -> None:
        """Refuse new connections and cut the open ones."""
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)  # wakes the accept() below
            server.close()
        self.cut()

    def cut(self) -> None:
        """Drop every connection through the relay, mid-stream (bytes in transit are lost)."""
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            with contextlib.suppress(OSError):
                link.shutdown(socket.SHUT_RDWR)
            link.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:  # the broker is down: so is the daemon's connection
                client.close()
                continue
            with self._lock:
                self._links += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_RDWR)


def start_simulate(tmp_path: Path, url: str, *flags: str) -> subprocess.Popen:
    """`birdd --simulate` of the thrush recording per window at 0.4 (18 detections), with
    MQTT to ``url`` and fast reconnects."""
    config = tmp_path / "config.yaml"
    config.write_text("station: {id: garden}\n" + FAST_RECONNECT)
    command = [sys.executable, "-m", "birdd.daemon", "--simulate", str(recording(THRUSH))]
    command += ["--min-conf", "0.4", "--per-window", "--format", "jsonl", "--output", "/dev/null"]
    command += ["--db", str(tmp_path / "db.sqlite"), "--config", str(config), "--mqtt", url]
    return subprocess.Popen(
        [*command, *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def stored(db: Path) -> list:
    """(id, published_at) of every row, in rowid order; none while the schema is not there."""
    with contextlib.closing(sqlite3.connect(str(db))) as conn:
        try:
            return conn.execute("SELECT id, published_at FROM detections ORDER BY rowid").fetchall()
        except sqlite3.OperationalError:
            return []


def detection_ids(subscriber: Subscriber) -> List[str]:
    return [json.loads(m.payload)["id"] for m in subscriber.messages if "/detections" in m.topic]


def payloads(subscriber: Subscriber, topic: str) -> List[bytes]:
    return [m.payload for m in subscriber.messages if m.topic == topic]


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class DurableListener:
    """``birdd listen --client-id`` until it has printed ``count`` detections; its lines are
    read as they come."""

    def __init__(self, broker_url: str, count: int) -> None:
        command = [sys.executable, "-m", "birdd.daemon", "listen", "--mqtt", broker_url]
        command += ["--client-id", "test-hub", "--format", "jsonl", "--count", str(count)]
        command += ["--timeout", "120"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.ids: List[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.ids.append(json.loads(line)["id"])

    def finish(self, timeout: float) -> str:
        """Wait for the exit (0: all ``count`` printed); its stderr."""
        try:
            _, err = self.process.communicate(timeout=timeout)
        finally:
            self.process.kill()
        self._reader.join(timeout=5)
        assert self.process.returncode == 0, err
        return err


def test_broker_restart_and_network_cuts_mid_run_lose_nothing(
    birdnet_model, broker_factory, tmp_path
):
    broker = broker_factory("plain", persistent=True)
    relay = Relay(broker.port)
    relay.open()
    hub = DurableListener(broker.url, 18)
    try:
        broker.wait_for_log(" 1 birdd/+/detections", timeout=20)
        daemon = start_simulate(tmp_path, f"mqtt://127.0.0.1:{relay.port}", "--realtime", "2.5")
        try:
            wait_until(lambda: len(hub.ids) >= 1, 30, "the first detection")
            broker.stop()  # the outage: detections go on into SQLite meanwhile
            time.sleep(2.5)
            broker.start()  # the station is not held back: the broker queues for the hub
            wait_until(lambda: len(hub.ids) >= 5, 30, "five detections")
            relay.cut()  # a network drop with the broker up
            _, err = daemon.communicate(timeout=60)
        finally:
            daemon.kill()
            relay.close()
        hub_err = hub.finish(timeout=60)
    finally:
        hub.process.kill()
    assert daemon.returncode == 0, err
    rows = stored(tmp_path / "db.sqlite")
    assert len(rows) == 18 and all(published_at for _, published_at in rows)
    assert hub.ids == [row_id for row_id, _ in rows]  # each once; one station, one lane: in order
    assert err.count("mqtt: connected to") >= 3, err
    assert "Traceback" not in err + hub_err


def test_sigkill_while_the_broker_is_down_then_publish_delivers_all(
    birdnet_model, broker_factory, tmp_path
):
    broker = broker_factory("plain", start=False)
    daemon = start_simulate(tmp_path, broker.url, "--realtime", "3")
    db = tmp_path / "db.sqlite"
    try:
        wait_until(lambda: db.exists() and len(stored(db)) >= 3, 30, "3 detections in SQLite")
    finally:
        daemon.send_signal(signal.SIGKILL)
        daemon.communicate(timeout=10)
    rows = stored(db)
    assert rows and not any(published_at for _, published_at in rows)
    publish = ("publish", "--db", str(db), "--station", "garden", "--mqtt", broker.url)
    down = run_birdd(*publish, "--timeout", "1")
    assert down.returncode == 1
    assert f"{len(rows)} detection(s) still unpublished after 1 s" in down.stderr
    broker.start()
    with Subscriber(broker, "birdd/#") as hub:
        result = run_birdd(*publish, "--timeout", "20")
        assert result.returncode == 0, result.stderr
        hub.wait_for(lambda ms: len(detection_ids(hub)) >= len(rows), timeout=5)
        assert detection_ids(hub) == [row_id for row_id, _ in rows]
        assert payloads(hub, "birdd/garden/status") == []  # publish speaks for no station
    assert all(published_at for _, published_at in stored(db))
    again = run_birdd(*publish, "--timeout", "5")
    assert again.returncode == 0 and "published 0 detection(s)" in again.stderr


def test_status_online_then_offline_by_last_will_on_sigkill(birdnet_model, broker, tmp_path):
    with Subscriber(broker, "birdd/garden/status") as status:
        daemon = start_simulate(tmp_path, broker.url, "--realtime", "1")
        try:
            status.wait_for(lambda ms: [m.payload for m in ms] == [b"online"], timeout=30)
            with Subscriber(broker, "birdd/garden/status") as late:
                (kept,) = late.wait_for(lambda ms: len(ms) == 1, timeout=5)
            assert kept.retain and kept.payload == b"online"
            killed_at = time.monotonic()
            daemon.send_signal(signal.SIGKILL)
            status.wait_for(lambda ms: ms[-1].payload == b"offline", timeout=5)
            assert time.monotonic() - killed_at < 2
        finally:
            daemon.kill()
            daemon.communicate(timeout=10)
    with Subscriber(broker, "birdd/garden/status") as late:
        (kept,) = late.wait_for(lambda ms: len(ms) == 1, timeout=5)
    assert kept.retain and kept.payload == b"offline"
