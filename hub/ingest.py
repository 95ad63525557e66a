"""Durable MQTT ingest: every message from the stations into the store, exactly once by id.

The session. A fixed client id with a session the broker keeps (MQTT 5: clean start off and a
session expiry; 3.1.1: clean session off), QoS 1 subscriptions to ``<prefix>/+/detections``,
``…/status`` and ``…/stats``: while the hub is away, the broker queues what the stations send.

The acknowledgement. paho's ``manual_ack``: a message's PUBACK goes out only after the
transaction holding its row has committed. A hub killed mid-batch never acknowledged that batch,
so the broker sends it again; a message committed but not yet acknowledged comes again and
counts as a resend (``detections.resends``), never a second row.

Connections. Acknowledgements carry the connection they came in on (a generation, bumped when
the connection drops and before each connect); an acknowledgement for an older connection is
not sent: the broker re-sends those messages under the same packet ids, and a late PUBACK could
otherwise acknowledge a newer message that reused the id before its row was committed.

Threads. paho's network thread only queues messages; one writer thread batches, validates,
writes, commits and acknowledges. With the database down the writer retries the same batch
with backoff and acknowledges nothing, so the broker stops sending after ``receive_maximum``
unacknowledged messages and keeps the rest queued.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from typing import Any, List, NamedTuple, Tuple

import paho.mqtt.client as paho

from birdd.daemon.mqtt.client import apply_credentials, persistent_client, resume_session
from birdd.daemon.mqtt.messages import SchemaCheck
from birdd.daemon.retry import Backoff
from birdd.hub.config import HubConfig, IngestConfig
from birdd.hub.messages import Decoded, decode
from birdd.hub.store.base import (
    REJECTED_KEEP_BYTES,
    Batch,
    NewRejected,
    Store,
    StoreError,
    StoreUnavailable,
)

log = logging.getLogger("birdd")

KIND_FIELDS = {"NewDetection": "detections", "NewStatus": "statuses", "NewStats": "stats"}
STORE_RETRY_MIN_S, STORE_RETRY_MAX_S = 0.2, 10.0


class Received(NamedTuple):
    """One message as paho handed it over, with the connection (generation) it came on (a
    tuple: paho's thread makes thousands a second)."""

    mid: int
    qos: int
    topic: str
    payload: bytes
    retained: bool
    received_ms: int
    generation: int


Pair = Tuple[Received, Decoded]


class Session:
    """The broker side: the paho client, its subscriptions, and safe acknowledgements."""

    def __init__(self, config: HubConfig, inbox: queue.SimpleQueue[Received]) -> None:
        self.config, self.inbox = config.mqtt, inbox
        mqtt = config.mqtt
        self.where = f"{mqtt.host}:{mqtt.connection().resolved_port()}"
        self.filters = [
            f"{prefix}/+/{kind}"
            for prefix in mqtt.topic_prefixes
            for kind in ("detections", "status", "stats")
        ]
        self.state = "connecting"
        self.connected = threading.Event()
        self._lock = threading.Lock()
        self._generation = 0
        self._backoff = Backoff(mqtt.reconnect_min_s, mqtt.reconnect_max_s)
        self.client = self._make_client()

    def _make_client(self) -> paho.Client:
        mqtt = self.config
        client = persistent_client(mqtt.client_id, mqtt.protocol)
        try:
            apply_credentials(client, mqtt.connection())
        except OSError as exc:  # ssl.SSLError included
            raise ValueError(f"mqtt.tls: cannot load the certificates or key: {exc}") from None
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        mqtt = self.config
        port = mqtt.connection().resolved_port()
        self.client.reconnect_delay_set(mqtt.reconnect_min_s, mqtt.reconnect_min_s)  # type: ignore[arg-type]
        resume = resume_session(mqtt.protocol, mqtt.session_expiry_s, mqtt.receive_maximum)
        self.client.connect_async(mqtt.host, port, mqtt.keepalive_s, **resume)
        self.client.loop_start()

    def stop(self) -> None:
        with self._lock:
            self._generation += 1  # no acknowledgement after this
        self.state = "stopped"
        self.client.disconnect()
        self.client.loop_stop()

    def ack(self, received: List[Received]) -> int:
        """Acknowledge committed messages of the current connection; how many were sent."""
        sent = 0
        with self._lock:
            for message in received:
                if message.qos > 0 and message.generation == self._generation:
                    self.client.ack(message.mid, message.qos)
                    sent += 1
        return sent

    def _bump(self) -> None:
        with self._lock:
            self._generation += 1

    def _on_pre_connect(self, client: paho.Client, userdata: Any) -> None:
        self._bump()

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            self._set_state(f"the broker refused us: {reason}")
            return
        self._backoff.reset()
        client.subscribe([(topic, 1) for topic in self.filters])
        resumed = " (session resumed)" if flags.session_present else ""
        self._set_state("connected", resumed)
        self.connected.set()

    def _on_connect_fail(self, client, userdata) -> None:
        if self.state == "stopped":
            return  # an attempt paho's thread was making when stop() came: not news
        # paho calls this inside its ``except OSError``: the error is still current.
        error = sys.exc_info()[1]
        reason = getattr(error, "strerror", None) or str(error) or "no answer"
        self._set_state(f"cannot reach the broker: {reason}")
        self._retry_later()

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        self._bump()
        self.connected.clear()
        if self.state == "stopped":
            return
        if self.state == "connected":
            self._set_state(f"lost the connection: {reason}")
        self._retry_later()

    def _on_message(self, client, userdata, message: paho.MQTTMessage) -> None:
        # no lock: reading an int is atomic, and a message stamped just before a bump is
        # only left unacknowledged (the broker sends it again)
        self.inbox.put(
            Received(
                message.mid,
                message.qos,
                message.topic,
                bytes(message.payload),
                bool(message.retain),
                int(time.time() * 1000),
                self._generation,
            )
        )

    def _retry_later(self) -> None:
        delay = self._backoff.next()
        self.client.reconnect_delay_set(delay, delay)  # type: ignore[arg-type]

    def _set_state(self, state: str, detail: str = "") -> None:
        if state == self.state:
            return
        self.state = state
        if state == "connected":
            log.info("hub: connected to the broker at %s%s", self.where, detail)
        else:
            log.warning("hub: %s: %s; retrying with backoff", self.where, state)


class Writer:
    """Batches from the inbox → the store, one transaction each, then the acknowledgements."""

    def __init__(
        self,
        store: Store,
        session: Session,
        inbox: queue.SimpleQueue[Received],
        check: SchemaCheck,
        config: IngestConfig,
    ) -> None:
        self.store, self.session = store, session
        self.inbox, self.check, self.config = inbox, check, config
        self.stored = self.rejected = 0
        self._stopping = threading.Event()
        self._problem = ""
        self._thread = threading.Thread(target=self._run, name="hub writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Write and acknowledge what has arrived, then return."""
        self._stopping.set()
        self._thread.join()

    def _run(self) -> None:
        while not (self._stopping.is_set() and self.inbox.empty()):
            batch = self._collect()
            if batch:
                self._commit(batch)

    def _collect(self) -> List[Received]:
        try:
            first = self.inbox.get(timeout=0.1)
        except queue.Empty:
            return []
        batch, deadline = [first], time.monotonic() + self.config.batch_wait_s
        while len(batch) < self.config.batch_max:
            left = deadline - time.monotonic()
            try:
                batch.append(self.inbox.get(timeout=left) if left > 0 else self.inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def _commit(self, received: List[Received]) -> None:
        pairs = [
            (m, decode(m.topic, m.payload, m.retained, m.received_ms, self.check)) for m in received
        ]
        self._write(pairs)
        self.session.ack(received)

    def _write(self, pairs: List[Pair]) -> None:
        """Write until committed. The database away is waited for; a batch it refuses is
        written message by message, and a message it refuses is kept as rejected."""
        backoff = Backoff(STORE_RETRY_MIN_S, STORE_RETRY_MAX_S)
        batch = _batch([row for _, row in pairs])
        while True:
            try:
                self.store.write(batch)
                self._recovered()
                self.stored += len(batch.detections)
                self.rejected += len(batch.rejected)
                return
            except StoreUnavailable as exc:
                self._report(str(exc))
            except StoreError as exc:
                if len(pairs) > 1:
                    for pair in pairs:
                        self._write([pair])
                    return
                message, row = pairs[0]
                if not isinstance(row, NewRejected):
                    self._write([(message, _rejected(message, f"the database refused it: {exc}"))])
                    return
                self._report(f"it refuses even a rejected-message row: {exc}")
            time.sleep(backoff.next())
            self._reconnect()

    def _reconnect(self) -> None:
        try:
            self.store.reconnect()
        except StoreError as exc:
            self._report(str(exc))

    def _report(self, problem: str) -> None:
        if problem != self._problem:
            self._problem = problem
            log.warning("hub: the database: %s; retrying with backoff", problem)

    def _recovered(self) -> None:
        if self._problem:
            self._problem = ""
            log.info("hub: the database is back")


def _batch(rows: List[Decoded]) -> Batch:
    batch = Batch()
    for row in rows:
        getattr(batch, KIND_FIELDS.get(type(row).__name__, "rejected")).append(row)
    return batch


def _rejected(message: Received, reason: str) -> NewRejected:
    payload = message.payload
    return NewRejected(
        message.topic, reason, payload[:REJECTED_KEEP_BYTES], len(payload), message.received_ms
    )
