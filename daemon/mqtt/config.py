"""MQTT settings: the config block, the ``--mqtt URL`` form, and where the password comes from.

The password is never needed in the YAML: it is read from ``password_env`` (default
``BIRDD_MQTT_PASSWORD``) or from a file, such as a systemd credential
(``$CREDENTIALS_DIRECTORY/mqtt-password``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator
from typing_extensions import Literal

DEFAULT_PASSWORD_ENV = "BIRDD_MQTT_PASSWORD"
CREDENTIAL_NAME = "mqtt-password"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TLSConfig(Strict):
    ca_file: Optional[Path] = Field(
        None,
        description="CA certificate (PEM) to check the broker against; unset: system CAs.",
    )
    cert_file: Optional[Path] = Field(None, description="Client certificate (PEM) for mutual TLS.")
    key_file: Optional[Path] = Field(None, description="Client private key (PEM) for mutual TLS.")
    insecure: bool = Field(
        False,
        description="Skip the broker certificate's host-name check (warned at every start).",
    )


class HomeAssistantConfig(Strict):
    enabled: bool = Field(False, description="Publish Home Assistant MQTT discovery configs.")
    prefix: str = Field("homeassistant", description="Home Assistant's discovery prefix.")


class MqttConfig(Strict):
    enabled: bool = Field(False, description="Publish detections, status and stats over MQTT.")
    host: str = Field("localhost", description="Broker host name or address.")
    port: Optional[int] = Field(
        None, ge=1, le=65535, description="Broker port; unset: 1883, or 8883 with TLS."
    )
    protocol: Literal["3.1.1", "5"] = Field("5", description="MQTT protocol version.")
    topic_prefix: Optional[str] = Field(
        None, description="Topic prefix; unset: birdd/<station id>."
    )
    client_id: Optional[str] = Field(None, description="MQTT client id; unset: birdd-<station id>.")
    username: Optional[str] = Field(None, description="User name for the broker.")
    password_env: str = Field(
        DEFAULT_PASSWORD_ENV, description="Environment variable holding the password."
    )
    password_file: Optional[Path] = Field(
        None,
        description="File holding the password (a systemd credential, say); unset: "
        "$CREDENTIALS_DIRECTORY/mqtt-password when it exists.",
    )
    tls: Optional[TLSConfig] = Field(
        None, description="TLS settings; unset: plain TCP (mqtts:// URLs turn TLS on)."
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keep-alive interval.")
    reconnect_min_s: float = Field(
        1.0, gt=0, le=60, description="First reconnect delay; doubles per failure, with jitter."
    )
    reconnect_max_s: float = Field(60.0, gt=0, le=3600, description="Longest reconnect delay.")
    max_inflight: int = Field(
        256, ge=1, le=65535, description="Detections published and not yet acknowledged, at most."
    )
    stats_interval_s: float = Field(
        60.0, ge=1, le=86400, description="Seconds between …/stats health messages."
    )
    drain_timeout_s: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="At the end of a run, wait at most this long for the outbox to empty; "
        "what is left is sent by the next run or `birdd publish`.",
    )
    homeassistant: HomeAssistantConfig = Field(
        default_factory=HomeAssistantConfig, description="Home Assistant MQTT discovery."
    )

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and (not value.strip("/") or any(c in value for c in "#+")):
            raise ValueError("a topic prefix such as 'birdd/garden': no '#', '+' or empty levels")
        return value.strip("/") if value is not None else None

    def resolved_port(self) -> int:
        return self.port or (8883 if self.tls is not None else 1883)

    def prefix_for(self, station: str) -> str:
        return self.topic_prefix or f"birdd/{station}"

    def password(self) -> Optional[str]:
        """The password from the environment, else from the credential file; None if neither."""
        from_env = os.environ.get(self.password_env)
        if from_env:
            return from_env
        path = self.password_file
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if path is None and credentials:
            candidate = Path(credentials) / CREDENTIAL_NAME
            path = candidate if candidate.is_file() else None
        if path is None:
            return None
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(
                f"mqtt.password_file {path}: cannot read it ({exc.strerror})"
            ) from None


def parse_mqtt_url(url: str) -> Dict[str, Any]:
    """``mqtt[s]://[user@]host[:port][/prefix]`` → the ``mqtt`` config keys it sets.

    A password in the URL is refused: it would show in ``ps`` and shell history.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"--mqtt {url!r}: use mqtt://host[:port][/prefix] or mqtts://…")
    if parts.password is not None:
        raise ValueError(
            f"--mqtt: put no password in the URL; set {DEFAULT_PASSWORD_ENV} or mqtt.password_file"
        )
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"--mqtt {url!r}: the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"--mqtt {url!r}: no broker host")
    keys: Dict[str, Any] = {"enabled": True, "host": parts.hostname}
    if port:
        keys["port"] = port
    if parts.username:
        keys["username"] = unquote(parts.username)
    if parts.path.strip("/"):
        keys["topic_prefix"] = parts.path.strip("/")
    if parts.scheme == "mqtts":
        keys["tls"] = {}
    return keys
