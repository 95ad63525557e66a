"""``<prefix>/stats``: the station's health as JSON, QoS 0, not retained.

Published on every connect (so once at start), every ``mqtt.stats_interval_s`` while connected,
and once at a clean stop. Nothing is queued while the broker is away: stale health is noise.
The message's JSON Schema is ``docs/schema/stats.v1.json``; a field that only some stations
have (``gate``, with a bird / no-bird gate; ``db_recovered_from``, after a damaged database was
moved aside) is optional there, so older messages stay valid.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from birdd.daemon.mqtt.client import Connection

THERMAL_ZONES = Path("/sys/class/thermal")


class StatsReporter:
    def __init__(
        self,
        connection: Connection,
        topic: str,
        interval_s: float,
        fields: Callable[[], Dict[str, Any]],
    ) -> None:
        self.connection, self.topic, self.interval_s = connection, topic, interval_s
        self.fields = fields
        self._wake, self._stopping = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="mqtt stats", daemon=True)
        connection.on_connected.append(self._wake.set)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the timer and publish the last report (when connected)."""
        self._stopping.set()
        self._wake.set()
        self._thread.join()
        self.publish()

    def publish(self) -> None:
        if self.connection.connected:
            payload = json.dumps(self.fields(), separators=(",", ":")).encode("utf-8")
            self.connection.publish(self.topic, payload, qos=0)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stopping.is_set():
                return
            self.publish()


def disk_free_bytes(path: Path) -> Optional[int]:
    """Free bytes on the file system holding ``path`` (the database)."""
    try:
        return shutil.disk_usage(str(path.parent)).free
    except OSError:
        return None


def cpu_temperature_c() -> Optional[float]:
    """The first readable thermal zone (the SoC on a Raspberry Pi or a Jetson); None if none."""
    for zone in sorted(THERMAL_ZONES.glob("thermal_zone*")):
        try:
            return int((zone / "temp").read_text().strip()) / 1000
        except (OSError, ValueError):
            continue
    return None
