"""The outbox in-process against a real mosquitto: backlog drain rate, live rows interleaved with
the backlog, marking only on PUBACK, re-sends with the same id, retention, and the database
staying visible to other processes while the outbox holds its own connection."""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import List

import pytest
from broker import Subscriber, free_port

from birdd.daemon.config import load_config
from birdd.daemon.mqtt.service import MqttPublisher
from birdd.daemon.records import Detection, RunInfo, new_detection_id
from birdd.daemon.sinks.sqlite import Retention, SQLiteSink
from birdd.daemon.store.sqlite_outbox import OutboxStore
from birdd.daemon.store.sqlite_store import SQLiteStore
from birdd.engines.models.labels import Species

ROBIN = Species("Turdus migratorius", "American Robin", "amerob", True)
MODEL = {"name": "BirdNET", "version": "2.4", "sha256": "0" * 64}
LONG_AGO = datetime(2024, 5, 2, 4, 0, tzinfo=timezone.utc)


def detection(start: datetime) -> Detection:
    return Detection(
        id=new_detection_id(),
        species=ROBIN,
        species_index=1,
        confidence=0.9,
        offset_start=0.0,
        offset_end=3.0,
        start=start,
        end=start + timedelta(seconds=3),
        source="dawn.wav",
        channel="mix",
        station="garden",
        model=MODEL,
    )


def run_info(run_id: str) -> RunInfo:
    now = datetime.now(timezone.utc)
    return RunInfo(run_id, "garden", "simulate", "dawn.wav", now, "filename", MODEL, "{}")


def fill(db: Path, count: int, start: datetime = LONG_AGO) -> List[str]:
    """``count`` detections of one finished run; returns their ids in rowid order."""
    made = [detection(start + timedelta(seconds=3 * i)) for i in range(count)]
    with SQLiteStore(db) as store:
        run_id = new_detection_id()
        store.begin_run(run_info(run_id))
        for first in range(0, count, 5000):
            store.add_detections(run_id, made[first : first + 5000])
        store.end_run(run_id, "complete")
    return [d.id for d in made]


def publisher_for(db: Path, port: int, **extra) -> MqttPublisher:
    overrides = {
        "station.id": "garden",
        "storage.db": str(db),
        "mqtt.enabled": True,
        "mqtt.host": "127.0.0.1",
        "mqtt.port": port,
        "mqtt.reconnect_min_s": 0.05,
        "mqtt.reconnect_max_s": 0.2,
        **{f"mqtt.{key}": value for key, value in extra.items()},
    }
    return MqttPublisher(load_config(None, overrides))


def unpublished(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(str(db))) as conn:
        return conn.execute(
            "SELECT COUNT(*) FROM detections WHERE published_at IS NULL"
        ).fetchone()[0]


def received_ids(subscriber: Subscriber) -> List[str]:
    return [json.loads(m.payload)["id"] for m in subscriber.messages]


def test_a_backlog_drains_without_starving_live_rows(broker, tmp_path):
    """20,000 rows of backlog and a live detection every 20 ms: everything is delivered, each
    lane in order, live rows during the drain. (The drain rate is bench/mqtt.py's.)"""
    db = tmp_path / "db.sqlite"
    backlog = fill(db, 20_000)
    live: List[str] = []
    with Subscriber(broker, "birdd/+/detections", qos=0) as hub:
        publisher = publisher_for(db, broker.port)
        sink = SQLiteSink(db, on_commit=publisher.notify_commit)
        publisher.start()
        sink.open(run_info("live"))
        for _ in range(30):  # a detection every 20 ms while the backlog drains
            row = detection(datetime.now(timezone.utc))
            sink.write([row])
            live.append(row.id)
            time.sleep(0.02)
        assert publisher.drain(60)
        sink.close("complete")
        assert publisher.stop() == 0
        hub.wait_for(lambda ms: len(ms) >= len(backlog) + len(live), timeout=10)
        order = received_ids(hub)
    assert unpublished(db) == 0
    assert [i for i in order if i in set(live)] == live  # each lane in rowid order
    backlog_set = set(backlog)
    assert [i for i in order if i in backlog_set] == backlog
    position = {message_id: index for index, message_id in enumerate(order)}
    assert position[live[-1]] < position[backlog[-1]]  # live rows went out during the drain
    assert position[live[0]] < 100  # the first one at once, not after the backlog


def read_packet(sock: socket.socket) -> bytes:
    """One MQTT packet: the type byte, the variable-length remaining length, the rest."""
    packet = bytearray(sock.recv(1))
    length, shift = 0, 0
    while True:
        byte = sock.recv(1)[0]
        packet.append(byte)
        length += (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            break
    while length > 0:
        chunk = sock.recv(length)
        packet += chunk
        length -= len(chunk)
    return bytes(packet)


class OneWayRelay:
    """Passes the client's bytes to the broker and swallows the broker's replies (no PUBACK)."""

    def __init__(self, broker_port: int) -> None:
        self.port = free_port()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._links: List[socket.socket] = []
        self.broker_port = broker_port
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._server.accept()
                upstream = socket.create_connection(("127.0.0.1", self.broker_port))
                self._links += [client, upstream]
                threading.Thread(target=self._forward, args=(client, upstream), daemon=True).start()
                threading.Thread(target=self._swallow, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _forward(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)

    @staticmethod
    def _swallow(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sink.sendall(read_packet(source))  # the CONNACK: the client must count as connected
            while source.recv(65536):
                pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        for link in self._links:
            with contextlib.suppress(OSError):
                link.shutdown(socket.SHUT_RDWR)
            link.close()


def test_rows_are_marked_only_on_puback_and_sent_again_with_the_same_id(broker, tmp_path):
    db = tmp_path / "db.sqlite"
    ids = fill(db, 10)
    with Subscriber(broker, "birdd/+/detections") as hub:
        relay = OneWayRelay(broker.port)
        try:
            deaf = publisher_for(db, relay.port)
            deaf.start()
            assert not deaf.drain(1.5)
            assert deaf.stop() == 10
        finally:
            relay.close()
        hub.wait_for(lambda ms: len(ms) >= 10, timeout=5)
        assert unpublished(db) == 10  # the broker got them all, but no PUBACK came back
        again = publisher_for(db, broker.port)
        again.start()
        assert again.drain(10)
        assert again.stop() == 0
        hub.wait_for(lambda ms: len(ms) >= 20, timeout=5)
        assert received_ids(hub) == ids + ids
    assert unpublished(db) == 0


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_both_protocol_versions_deliver_and_mark(broker, tmp_path, protocol):
    db = tmp_path / "db.sqlite"
    ids = fill(db, 50)
    with Subscriber(broker, "birdd/+/detections") as hub:
        publisher = publisher_for(db, broker.port, protocol=protocol)
        publisher.start()
        assert publisher.drain(10)
        assert publisher.stop() == 0
        hub.wait_for(lambda ms: len(ms) >= 50, timeout=5)
        assert received_ids(hub) == ids
    assert unpublished(db) == 0


def test_the_broker_state_is_visible_in_stats(broker_factory, tmp_path, monkeypatch):
    broker = broker_factory("password")
    db = tmp_path / "db.sqlite"
    fill(db, 3)
    monkeypatch.setenv("BIRDD_MQTT_PASSWORD", "wrong")
    publisher = publisher_for(db, broker.port, username=broker.user)
    publisher.start()
    deadline = time.monotonic() + 5
    while not publisher.connection.state.startswith("login refused"):
        assert time.monotonic() < deadline, publisher.connection.state
        time.sleep(0.02)
    stats = publisher.stats(dict)
    assert stats["mqtt_state"] == "login refused: Not authorized"
    assert stats["outbox_backlog"] == 3
    assert publisher.stop() == 3


def test_other_processes_see_each_commit_while_the_outbox_is_open(tmp_path):
    """Regression: the store once read the file header with open()/close(), which drops this
    process's SQLite locks; another process then deleted the WAL the sink was writing to."""
    db = tmp_path / "db.sqlite"
    outbox = OutboxStore(db)
    sink = SQLiteSink(db)
    sink.open(run_info("r"))
    count = "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute(" + (
        "'SELECT COUNT(*) FROM detections').fetchone()[0])"
    )
    try:
        for expected in (1, 2, 3):
            sink.write([detection(LONG_AGO)])
            seen = subprocess.run(
                [sys.executable, "-c", count, str(db)], capture_output=True, text=True, check=True
            )
            assert int(seen.stdout) == expected
            assert outbox.backlog() == expected
    finally:
        sink.close("complete")
        outbox.close()


def purge_at_open(db: Path, keep_unpublished: bool) -> List[str]:
    sink = SQLiteSink(db, retention=Retention(30, keep_unpublished=keep_unpublished))
    sink.open(run_info(new_detection_id()))
    sink.close("complete")
    with SQLiteStore(db) as store:
        return [record["id"] for record in store.detections()]


@pytest.mark.parametrize("keep_unpublished", [True, False])
def test_retention_deletes_old_rows_and_keeps_the_outbox(tmp_path, keep_unpublished):
    db = tmp_path / "db.sqlite"
    old = fill(db, 3)  # 2024: older than 30 days
    recent = fill(db, 1, datetime.now(timezone.utc) - timedelta(days=1))
    with OutboxStore(db) as store:
        store.mark_published([1, 2])  # two of the old rows were delivered
    expected = [old[2], *recent] if keep_unpublished else recent
    assert purge_at_open(db, keep_unpublished) == expected


def test_retention_keeps_the_newest_row_so_rowids_are_not_reused(tmp_path):
    db = tmp_path / "db.sqlite"
    old = fill(db, 3)
    assert purge_at_open(db, keep_unpublished=False) == old[-1:]
