"""The ``metrics`` config block: where the optional Prometheus endpoint listens."""

from __future__ import annotations

from typing import Optional, Tuple

from pydantic import BaseModel, ConfigDict, Field, field_validator


def split_listen(value: str) -> Tuple[str, int]:
    """``HOST:PORT`` (an IPv6 host in brackets: ``[::1]:9101``) as (host, port)."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(
            f"{value!r} is not HOST:PORT: give an address and a port, e.g. 127.0.0.1:9101"
        )
    return host, int(port)


class MetricsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    listen: Optional[str] = Field(
        None,
        description=(
            "Serve Prometheus metrics (/metrics) and a health check (/healthz) on HOST:PORT, "
            "e.g. 127.0.0.1:9101; unset: off. Needs the 'metrics' extra (prometheus-client). "
            "Anything that can reach the address can read the station's figures: keep it on "
            "loopback unless a firewall guards it."
        ),
    )

    @field_validator("listen")
    @classmethod
    def _valid_address(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            split_listen(value)
        return value

    @property
    def address(self) -> Optional[Tuple[str, int]]:
        """(host, port) to bind, or None when metrics are off."""
        return None if self.listen is None else split_listen(self.listen)
