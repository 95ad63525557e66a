"""Everything MQTT for one process: the connection, the outbox, stats and Home Assistant.

``birdd --simulate`` (and later ``birdd run``) starts one as the station: status topic with a
last will, stats, discovery. ``birdd publish`` starts one that only delivers the outbox: another
client id, and no status of its own, so it never says a station is online when it is not.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any, Callable, Dict, Optional

from birdd.daemon import __version__
from birdd.daemon.config import BirddConfig
from birdd.daemon.mqtt.client import Connection
from birdd.daemon.mqtt.homeassistant import HomeAssistant
from birdd.daemon.mqtt.outbox import Outbox
from birdd.daemon.mqtt.stats import StatsReporter, station_stats
from birdd.daemon.mqtt.topics import Topics

OFFLINE_WAIT_S = 2.0
"""How long a clean stop waits for the broker to acknowledge ``offline``."""

Health = Callable[[], Dict[str, Any]]


class MqttPublisher:
    def __init__(self, config: BirddConfig, as_station: bool = True) -> None:
        """``config`` is the whole birdd config (station, storage and mqtt blocks)."""
        self._as_station = as_station
        self._health: Optional[Health] = None
        self._cancel = threading.Event()
        self._began = time.monotonic()
        self._build(config)

    def _build(self, config: BirddConfig) -> None:
        as_station = self._as_station
        mqtt, station = config.mqtt, config.station
        self.config, self.db = mqtt, config.storage.db
        self.topics = Topics(mqtt, station.id)
        client_id = mqtt.client_id or f"birdd-{station.id}"
        if not as_station:
            client_id += "-publish"
        self.connection = Connection(mqtt, self.topics, client_id, announce=as_station)
        home = None
        if as_station and mqtt.homeassistant.enabled:
            home = HomeAssistant(mqtt.homeassistant, self.topics, self.connection, __version__)
            self.connection.on_connected.append(home.publish_discovery)
        self.outbox = Outbox(
            self.db,
            self.connection,
            self.topics,
            (station.lat, station.lon),
            after_marks=home.publish_state if home else None,
        )
        self._stats: Optional[StatsReporter] = None

    def start(self, health: Optional[Health] = None) -> None:
        """Start the outbox, the stats timer (given the pipeline's ``health``) and connecting."""
        self._health = health
        self.outbox.start()
        if health is not None:
            fields = functools.partial(self.stats, health)
            self._stats = StatsReporter(
                self.connection, self.topics.stats, self.config.stats_interval_s, fields
            )
            self._stats.start()
        self.connection.start()

    def reconnect(self, config: BirddConfig) -> None:
        """Go on with a new ``mqtt`` block (a config reload): the old connection says offline
        and closes, and a new one starts; what the broker had not acknowledged stays in the
        SQLite outbox, which the new connection delivers. A password or TLS file it cannot
        read is a ValueError before the old connection is touched."""
        Connection(config.mqtt, Topics(config.mqtt, config.station.id), "check", announce=False)
        self.stop()
        self._build(config)
        self.start(self._health)

    def notify_commit(self) -> None:
        """The SQLite sink's ``on_commit``: new rows are waiting."""
        self.outbox.notify_commit()

    def drain(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty; False at the timeout or after ``cancel``."""
        return self.outbox.drain(timeout_s, self._cancel)

    def cancel(self) -> None:
        """Cut a drain short (SIGINT / SIGTERM)."""
        self._cancel.set()

    def stop(self) -> int:
        """Last stats, ``offline``, mark what was acknowledged, disconnect; return how many
        detections stay unpublished."""
        if self._stats is not None:
            self._stats.stop()
        self.connection.go_offline(OFFLINE_WAIT_S)
        remaining = self.outbox.stop()
        self.connection.close()
        return remaining

    def stats(self, health: Health) -> Dict[str, Any]:
        """The ``…/stats`` message."""
        return {
            **station_stats(self.topics.station, self._began, health, self.db),
            "outbox_backlog": self.outbox.backlog,
            "mqtt_state": self.connection.state,
        }
