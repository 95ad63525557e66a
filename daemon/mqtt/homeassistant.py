"""Home Assistant MQTT discovery: sensors for the last species, its confidence and the detections
of today, and a connectivity sensor on the status topic.

The configs are retained under ``<discovery prefix>/<component>/<station>_<key>/config`` and
published again on every connect (a broker restarted without persistence forgets them). The
sensors read ``<prefix>/state``, a retained JSON summary the outbox refreshes after each batch
of acknowledged detections.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any, Dict, List, Tuple

from birdd.daemon.mqtt.client import OFFLINE, ONLINE, Connection
from birdd.daemon.mqtt.config import HomeAssistantConfig
from birdd.daemon.mqtt.topics import Topics
from birdd.daemon.store.sqlite_outbox import OutboxStore

SENSORS: Dict[str, Dict[str, Any]] = {
    "last_species": {
        "name": "Last species",
        "value_template": "{{ value_json.last_species }}",
        "icon": "mdi:bird",
    },
    "last_confidence": {
        "name": "Last confidence",
        "value_template": "{{ value_json.last_confidence }}",
        "icon": "mdi:gauge",
    },
    "detections_today": {
        "name": "Detections today",
        "value_template": "{{ value_json.detections_today }}",
        "state_class": "total_increasing",
        "icon": "mdi:counter",
    },
}


class HomeAssistant:
    def __init__(
        self, config: HomeAssistantConfig, topics: Topics, connection: Connection, version: str
    ) -> None:
        self.config, self.topics, self.connection = config, topics, connection
        self.object_id = re.sub(r"[^A-Za-z0-9_-]", "_", topics.station)
        self.device = {
            "identifiers": [f"birdd_{self.object_id}"],
            "name": f"birdd {topics.station}",
            "manufacturer": "birdd",
            "sw_version": version,
        }

    def discovery(self) -> List[Tuple[str, Dict[str, Any]]]:
        """(topic, config) for every entity."""
        messages = []
        for key, fields in SENSORS.items():
            entity = {**fields, **self._common(key), "state_topic": self.topics.state}
            if key == "last_species":
                entity["json_attributes_topic"] = self.topics.state  # the whole summary
            entity.update(
                availability_topic=self.topics.status,
                payload_available=ONLINE.decode(),
                payload_not_available=OFFLINE.decode(),
            )
            messages.append((self._topic("sensor", key), entity))
        online = {
            **self._common("online"),
            "name": "Online",
            "state_topic": self.topics.status,
            "payload_on": ONLINE.decode(),
            "payload_off": OFFLINE.decode(),
            "device_class": "connectivity",
        }
        messages.append((self._topic("binary_sensor", "online"), online))
        return messages

    def publish_discovery(self) -> None:
        """Runs in paho's network thread on every connect."""
        for topic, entity in self.discovery():
            self.connection.publish(topic, _json(entity), qos=1, retain=True)

    def publish_state(self, store: OutboxStore) -> None:
        """Runs in the outbox thread, which owns ``store``."""
        self.connection.publish(self.topics.state, _json(state(store)), qos=1, retain=True)

    def _common(self, key: str) -> Dict[str, Any]:
        return {"unique_id": f"birdd_{self.object_id}_{key}", "device": self.device}

    def _topic(self, component: str, key: str) -> str:
        return f"{self.config.prefix}/{component}/{self.object_id}_{key}/config"


def state(store: OutboxStore) -> Dict[str, Any]:
    """The station's summary: its latest detection and how many started today (local time)."""
    latest = store.latest() or {}
    species = latest.get("species", {})
    today = datetime.now().astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
    tomorrow = today + timedelta(days=1)
    return {
        "last_species": species.get("common"),
        "last_scientific": species.get("scientific"),
        "last_confidence": latest.get("confidence"),
        "last_detection": latest.get("start"),
        "detections_today": store.count_between(today, tomorrow),
    }


def _json(value: Dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")
