"""The outbox publisher: SQLite's unpublished detections → QoS 1 messages → ``published_at``.

Lanes. Unpublished rows are read in rowid order in two lanes: *live*, the rows committed after
the publisher started, and *backlog*, the older ones (left by an outage, a crash, a run without
MQTT). While both lanes have rows, free in-flight slots alternate between them: a 100,000-row
backlog drains at broker speed and a new detection waits behind at most one backlog message.
Each lane stays in rowid order; the two interleave.

Acknowledgement. A row gets ``published_at`` only when the broker's PUBACK for its message has
arrived, written in batches (one UPDATE per 100 acks or 50 ms). At most ``max_inflight`` messages
(and no more than the broker's MQTT 5 receive maximum) are unacknowledged. After a disconnect
paho sends every unacknowledged message again, in order, with the same detection id; after a
crash the rows are still unmarked and the next publisher sends them. Subscribers dedupe by id.

Threads. One outbox thread does all the SQL and publishing. paho's network thread only queues
acks and the SQLite sink only calls ``notify_commit``: neither ever waits for the broker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Deque, Dict, List, Optional, Tuple

from birdd.daemon.mqtt.client import Connection
from birdd.daemon.mqtt.payload import detection_payload
from birdd.daemon.mqtt.topics import Topics
from birdd.daemon.store.sqlite_outbox import OutboxRow, OutboxStore
from birdd.daemon.store.sqlite_store import StoreError

log = logging.getLogger("birdd")

FETCH_ROWS = 500
MARK_EVERY_ACKS = 100
MARK_EVERY_S = 0.05
POLL_S = 1.0
"""Fallback check for new rows (the sink's commit callback is the fast path); also how often the
backlog is counted again."""
STATE_EVERY_S = 1.0


class _Lane:
    """Rows with ``after < rowid <= upto`` (no upper bound for the live lane), read in batches."""

    def __init__(self, after: int, upto: Optional[int]) -> None:
        self.after, self.upto = after, upto
        self.rows: Deque[OutboxRow] = deque()
        self.stale = True
        """The database may hold rows this lane has not read yet."""

    def ready(self, store: OutboxStore) -> bool:
        if not self.rows and self.stale:
            self.stale = False  # cleared before the query: a commit meanwhile sets it again
            rows = store.unpublished(self.after, self.upto, FETCH_ROWS)
            if rows:
                self.after = rows[-1].rowid
                self.rows.extend(rows)
            if len(rows) == FETCH_ROWS:
                self.stale = True
        return bool(self.rows)

    @property
    def idle(self) -> bool:
        return not self.rows and not self.stale


class Outbox:
    def __init__(
        self,
        db: Path,
        connection: Connection,
        topics: Topics,
        place: Tuple[Optional[float], Optional[float]],
        after_marks: Optional[Callable[[OutboxStore], None]] = None,
    ) -> None:
        """``after_marks(store)`` runs in the outbox thread, at most once a second, after rows
        were marked and after each connect (Home Assistant's state)."""
        self._store = OutboxStore(db)
        self._connection, self._topics, self._place = connection, topics, place
        self._after_marks = after_marks
        boundary = self._store.last_rowid()
        self._live, self._backlog = _Lane(boundary, None), _Lane(0, boundary)
        self._live_turn = True
        self._pending: Dict[int, int] = {}
        """mid → rowid of every message not yet acknowledged."""
        self._acks: Deque[Tuple[int, Optional[str]]] = deque()
        self._marks: List[int] = []
        self._marks_since = 0.0
        self._state_due, self._state_at = after_marks is not None, 0.0
        self._wake, self._stopping = threading.Event(), threading.Event()
        self._idle, self._idle_lock = threading.Event(), threading.Lock()
        self.backlog = self._store.backlog()
        self.published = 0
        self.rejected = 0
        self._problem = ""
        self._thread = threading.Thread(target=self._run, name="mqtt outbox", daemon=True)
        connection.on_ack = self._on_ack
        connection.on_connected.append(self._on_connected)

    def start(self) -> None:
        self._thread.start()

    def notify_commit(self) -> None:
        """New rows were committed (the SQLite sink's ``on_commit``); returns at once."""
        self._live.stale = True
        self._wake.set()

    def drain(self, timeout_s: float, cancel: threading.Event) -> bool:
        """Wait until every unpublished row is acknowledged; False at the timeout or on cancel."""
        with self._idle_lock:
            self._idle.clear()
            self._live.stale = True
        self._wake.set()
        deadline = time.monotonic() + timeout_s
        while not cancel.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._idle.wait(min(left, 0.1)):
                return True
        return False

    def stop(self) -> int:
        """Mark what was acknowledged, close the database; return how many rows stay unpublished."""
        self._stopping.set()
        self._wake.set()
        self._thread.join()
        return self.backlog

    def _on_ack(self, mid: int, failure: Optional[str]) -> None:
        self._acks.append((mid, failure))
        self._wake.set()

    def _on_connected(self) -> None:
        """paho re-sends the unacknowledged messages right after this returns; with some
        pending, the outbox waits for the first PUBACK to publish more, so that new rows
        never overtake the re-sends."""
        self._state_due = self._after_marks is not None
        if not self._pending:
            self._wake.set()

    def _run(self) -> None:
        next_poll = 0.0
        while not self._stopping.is_set():
            self._wake.wait(self._wait_s(next_poll))
            self._wake.clear()
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + POLL_S
                self._live.stale = True
                self._guarded(self._count_backlog)
            self._guarded(self._step)
        self._take_acks()
        self._guarded(lambda: self._flush_marks(force=True))
        self._guarded(self._count_backlog)
        self._store.close()

    def _step(self) -> None:
        self._take_acks()
        self._flush_marks(force=False)
        if self._connection.connected:
            self._fill()
            self._update_state()
        with self._idle_lock:
            if self._live.idle and self._backlog.idle and not self._in_flight:
                self._idle.set()

    @property
    def _in_flight(self) -> bool:
        """Messages not yet acknowledged, or acknowledged and not yet marked."""
        return bool(self._pending or self._marks or self._acks)

    def _guarded(self, action: Callable[[], None]) -> None:
        """Run one step; a database error is logged once and retried at the next poll."""
        try:
            action()
        except StoreError as exc:
            if str(exc) != self._problem:
                self._problem = str(exc)
                log.error("mqtt outbox: %s; retrying", exc)

    def _wait_s(self, next_poll: float) -> float:
        until = self._marks_since + MARK_EVERY_S if self._marks else next_poll
        return max(0.0, until - time.monotonic())

    def _fill(self) -> None:
        window = min(self._connection.config.max_inflight, self._connection.receive_maximum)
        while len(self._pending) < window:
            lane = self._next_lane()
            if lane is None:
                return
            row = lane.rows.popleft()
            payload = detection_payload(row.record_json, *self._place)
            mid = self._connection.publish(self._topics.detections(row.station), payload, qos=1)
            if mid is None:
                lane.rows.appendleft(row)
                return
            self._pending[mid] = row.rowid

    def _next_lane(self) -> Optional[_Lane]:
        lanes = (self._live, self._backlog)
        for lane in lanes if self._live_turn else lanes[::-1]:
            if lane.ready(self._store):
                self._live_turn = lane is self._backlog
                return lane
        return None

    def _take_acks(self) -> None:
        while self._acks:
            mid, failure = self._acks.popleft()
            rowid = self._pending.pop(mid, None)
            if rowid is None:
                continue  # status, stats or state: not a detection
            if failure is None:
                if not self._marks:
                    self._marks_since = time.monotonic()
                self._marks.append(rowid)
                continue
            self.rejected += 1
            if self.rejected == 1:
                log.warning(
                    "mqtt: the broker refused a detection (%s); it stays unpublished", failure
                )

    def _flush_marks(self, force: bool) -> None:
        due = time.monotonic() - self._marks_since >= MARK_EVERY_S
        if self._marks and (force or due or len(self._marks) >= MARK_EVERY_ACKS):
            self._store.mark_published(self._marks)
            self.published += len(self._marks)
            self.backlog = max(0, self.backlog - len(self._marks))
            self._marks = []
            self._state_due = self._after_marks is not None

    def _update_state(self) -> None:
        due = self._state_due and time.monotonic() >= self._state_at
        if self._after_marks is not None and due:
            self._state_due = False
            self._state_at = time.monotonic() + STATE_EVERY_S
            self._after_marks(self._store)

    def _count_backlog(self) -> None:
        self.backlog = self._store.backlog()
