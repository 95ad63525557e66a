"""The daemon's configuration: pydantic models, YAML loading and one-line error reports.

``config.yaml`` at the repository root is the documented reference; every field here carries a
description, so ``birdd config-schema`` prints the same documentation.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    ValidationError,
    field_validator,
)
from pydantic_core import CoreSchema
from typing_extensions import Annotated

from birdd.daemon.clips.config import ClipsConfig
from birdd.daemon.health.config import MetricsConfig
from birdd.daemon.mqtt.config import MqttConfig
from birdd.daemon.postprocess import PostprocessConfig
from birdd.daemon.store.config import HousekeepingConfig
from birdd.engines.base import EngineConfig
from birdd.engines.models.modeldir import data_dir
from birdd.engines.registry import engine_config_type
from birdd.engines.tflite import TFLiteConfig

STATION_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StationConfig(Strict):
    id: str = Field(
        "birdd", description="Station name carried by every detection (and MQTT topics)."
    )
    lat: Optional[float] = Field(None, ge=-90, le=90, description="Station latitude (decimal °).")
    lon: Optional[float] = Field(
        None, ge=-180, le=180, description="Station longitude (decimal °)."
    )

    @field_validator("id")
    @classmethod
    def _id_is_topic_safe(cls, value: str) -> str:
        if not STATION_ID.match(value):
            raise ValueError("use 1-64 letters, digits, '_', '.' or '-' (it becomes an MQTT topic)")
        return value


class StdinConfig(Strict):
    sample_rate: int = Field(
        48000, ge=8000, le=384000, description="Rate of raw audio on stdin (WAV says its own)."
    )
    channels: int = Field(1, ge=1, le=32, description="Channels of raw audio on stdin.")
    format: Literal["s16le", "s24le", "s32le", "f32le"] = Field(
        "s16le", description="Sample format of raw audio on stdin (arecord -f S16_LE is s16le)."
    )


DEFAULT_INPUTS: List[Union[str, int]] = ["default"]


class AudioConfig(Strict):
    inputs: List[Union[str, int]] = Field(
        default_factory=lambda: list(DEFAULT_INPUTS),
        min_length=1,
        description="What `birdd run` listens to, one or more at once (each with its own ring "
        "buffer, all sharing the engine): 'default' (the system's default input), a sound "
        "device by name substring or index ('USB', 2; see `birdd devices`), a URL ffmpeg reads "
        "(rtsp://, rtsps://, http(s)://, srt://, rtmp://, udp://) or '-' for WAV or raw audio "
        "on stdin.",
    )
    channels: Union[int, str, List[int]] = Field(
        "mix",
        description="'mix' to analyse the downmix of all channels, a channel index, or a list "
        "of indices to analyse each channel separately (detections carry their channel).",
    )
    sample_rate: Optional[int] = Field(
        None,
        ge=8000,
        le=384000,
        description="Capture rate of sound devices; default 48000 when the device supports it, "
        "else its default rate. Audio is resampled to the model's rate.",
    )
    block_s: float = Field(
        0.5, gt=0.01, le=5, description="Seconds of audio read and resampled per block."
    )
    ring_buffer_s: float = Field(
        120, ge=10, le=3600, description="Capacity of the ring buffer between capture and windows."
    )
    watchdog_s: float = Field(
        5,
        ge=0.5,
        le=600,
        description="A live input that delivers no audio for this long is lost: it is "
        "reopened (ffmpeg restarted) with backoff and the outage is recorded as a gap.",
    )
    reconnect_max_s: float = Field(
        30, ge=1, le=3600, description="Longest wait between attempts to reopen a lost input."
    )
    decoder: Literal["ffmpeg", "pyav"] = Field(
        "ffmpeg",
        description="How network streams are decoded: 'ffmpeg' (one ffmpeg process per stream) "
        "or 'pyav' (inside the daemon, for hundreds of streams: http(s):// WAV, MP3 and AAC "
        "all through one reader thread, other streams a PyAV thread each; pip install "
        "'birdd[pyav]').",
    )
    require_device_at_start: bool = Field(
        False,
        description="Exit with status 1 when a sound device is missing at start instead of "
        "waiting for it (let systemd restart the service).",
    )
    silence_warn_s: float = Field(
        60, gt=0, description="Warn once an input has been digitally silent this long."
    )
    stdin: StdinConfig = Field(default_factory=StdinConfig)

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, values: List[Union[str, int]]) -> List[Union[str, int]]:
        for value in values:
            if (isinstance(value, int) and value < 0) or str(value).strip() == "":
                raise ValueError("allowed: 'default', a device name or index >= 0, a URL or '-'")
        if sum(str(value) == "-" for value in values) > 1:
            raise ValueError("stdin ('-') can be read once only")
        return values

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: Union[int, str, List[int]]) -> Union[int, str, List[int]]:
        if value == "mix" or (isinstance(value, int) and value >= 0):
            return value
        if isinstance(value, list) and len(set(value)) == len(value) > 0 and min(value) >= 0:
            return value
        raise ValueError("allowed: 'mix', a channel index 0, 1, … or a list of distinct indices")


class WindowConfig(Strict):
    overlap_s: float = Field(
        0.0, ge=0, description="Overlap of consecutive windows in seconds (hop = window − overlap)."
    )


class StorageConfig(Strict):
    db: Path = Field(
        default_factory=lambda: data_dir() / "birdd.sqlite",
        description="SQLite database, the source of truth for detections.",
    )
    retention_days: Optional[float] = Field(
        None,
        gt=0,
        description="Delete detections older than this many days (by detection time), at start "
        "and then hourly; with MQTT on, only those already published. Unset: keep forever.",
    )
    min_free_mb: float = Field(
        100.0,
        ge=0,
        description="Free megabytes kept on the disks of the database and the clips: below it "
        "clips stop (detections go on) and the housekeeping deletes clips. 0: no floor.",
    )
    housekeeping: HousekeepingConfig = Field(default_factory=HousekeepingConfig)

    @field_validator("db")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()


class OutputConfig(Strict):
    format: str = Field(
        "table",
        description="Output printed by simulate and run: table, jsonl, csv or raven; or "
        "parquet, to a file only (needs the birdd[parquet] extra).",
    )
    path: Optional[Path] = Field(None, description="Write the output to this file, not stdout.")

    @field_validator("format")
    @classmethod
    def _format(cls, value: str) -> str:
        if value not in OUTPUT_FORMATS:
            raise ValueError(f"allowed: {', '.join(OUTPUT_FORMATS)}")
        return value


OUTPUT_FORMATS = ("table", "jsonl", "csv", "raven", "parquet")


class RegisteredEngines:
    """Validates the ``engine`` section as the engine registry's discriminated union: the
    built-in engines' configs and those of engines registered through entry points, found when
    the ``BirddConfig`` class is built (at import). Each is an ``EngineConfig`` subclass, so
    ``EngineConfig`` is the section's static type."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return handler.generate_schema(engine_config_type())


class BirddConfig(Strict):
    # No docstring: it would become the JSON schema's description ('birdd config-schema').
    station: StationConfig = Field(default_factory=StationConfig)
    audio: AudioConfig = Field(default_factory=AudioConfig)
    engine: Annotated[EngineConfig, RegisteredEngines] = Field(default_factory=TFLiteConfig)
    windows: WindowConfig = Field(default_factory=WindowConfig)
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    clips: ClipsConfig = Field(default_factory=ClipsConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)


class ConfigError(ValueError):
    """An invalid config; ``lines`` holds one ``key path | value | message`` per problem."""

    def __init__(self, source: str, lines: List[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(lines))
        self.source = source
        self.lines = lines


def format_validation_error(error: ValidationError) -> List[str]:
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(top level)"
        value = item.get("input")
        shown = "(missing)" if item["type"] == "missing" else repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        message = item["msg"].replace("Value error, ", "")
        if item["type"] == "extra_forbidden":
            message = "unknown key: remove it or check its spelling against config.yaml"
        lines.append(f"{path} | {shown} | {message}")
    return lines


def read_yaml(path: Path) -> Dict[str, Any]:
    """Read a config file into a dict; problems with the file itself are a ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"(file) | {str(path)!r} | cannot read it: {exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "?"
        problem = f"(yaml) | {where} | not valid YAML: {exc}".splitlines()[0]
        raise ConfigError(str(path), [problem]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), [f"(top level) | {type(data).__name__} | must be a mapping"])
    return data


def set_path(data: Dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict, creating the levels; used for command-line overrides.

    A mapping is merged into a mapping already there: ``--mqtt mqtts://…`` turns TLS on
    without dropping the file's ``mqtt.tls.ca_file``.
    """
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    existing = node.get(parts[-1])
    if isinstance(existing, dict) and isinstance(value, dict):
        value = {**existing, **value}
    node[parts[-1]] = value


def build_config(data: Dict[str, Any], source: str = "config") -> BirddConfig:
    try:
        return BirddConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, format_validation_error(exc)) from None


def load_config(path: Optional[Path], overrides: Optional[Dict[str, Any]] = None) -> BirddConfig:
    """Load ``path`` (or defaults when None), apply dotted-key overrides, and validate."""
    data = read_yaml(path) if path is not None else {}
    for key, value in (overrides or {}).items():
        set_path(data, key, value)
    return build_config(data, str(path) if path else "command line")
