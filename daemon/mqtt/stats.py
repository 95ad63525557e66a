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
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from birdd.daemon import __version__
from birdd.daemon.mqtt.client import Connection
from birdd.daemon.store.sqlite_health import damaged_copies

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


def station_stats(
    station: str, began: float, health: Callable[[], Dict[str, Any]], db: Path
) -> Dict[str, Any]:
    """The ``…/stats`` fields every station has, MQTT or not (the publisher adds its outbox
    and connection; the Prometheus endpoint exports the same dict): ``began`` is the
    ``time.monotonic()`` uptime counts from, ``health`` the pipeline's part."""
    return {
        "station": station,
        "version": __version__,
        "uptime_s": round(time.monotonic() - began, 3),
        **health(),
        "disk_free_bytes": disk_free_bytes(db),
        "cpu_temp_c": cpu_temperature_c(),
        **_recovered(db),
    }


def _recovered(db: Path) -> Dict[str, str]:
    """``db_recovered_from``: the newest damaged database moved aside from ``db``, for as long
    as it is kept beside it (an operator deletes or archives it once looked at)."""
    copies = damaged_copies(db)
    return {"db_recovered_from": str(copies[-1])} if copies else {}


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
