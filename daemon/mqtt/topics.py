"""The topics one station publishes on."""

from __future__ import annotations

from dataclasses import dataclass

from birdd.daemon.mqtt.config import MqttConfig


@dataclass(frozen=True)
class Topics:
    config: MqttConfig
    station: str

    @property
    def prefix(self) -> str:
        return self.config.prefix_for(self.station)

    @property
    def status(self) -> str:
        """Retained ``online`` / ``offline``; ``offline`` is also the last will."""
        return f"{self.prefix}/status"

    @property
    def stats(self) -> str:
        return f"{self.prefix}/stats"

    @property
    def state(self) -> str:
        """Retained summary (last species, detections today) for Home Assistant's sensors."""
        return f"{self.prefix}/state"

    def detections(self, station: str) -> str:
        """Where a detection of ``station`` goes: under the configured prefix, else under
        ``birdd/<its station>`` (a backlog left by another station id keeps its own topic)."""
        return f"{self.config.prefix_for(station)}/detections"
