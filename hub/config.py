"""The hub's configuration: ``hub/hub.yaml`` is the documented reference (the station's
``config.yaml`` style); ``birdd hub serve`` flags override it.

Passwords never live in the YAML: the broker's comes from ``mqtt.password_env`` (default
``BIRDD_MQTT_PASSWORD``) or ``mqtt.password_file``; PostgreSQL's from ``store.password_env``
(default ``BIRDD_POSTGRES_PASSWORD``) or ``store.password_file`` (a systemd credential:
``$CREDENTIALS_DIRECTORY/postgres-password``), or libpq's own ``PGPASSWORD`` / ``~/.pgpass``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from typing_extensions import Literal

from birdd.daemon.clips.config import ClipBudgetConfig
from birdd.daemon.mqtt.config import DEFAULT_PASSWORD_ENV, MqttConfig, TLSConfig
from birdd.engines.models.modeldir import data_dir

DEFAULT_HUB_CONFIG = Path("/etc/birdd/hub.yaml")
POSTGRES_PASSWORD_ENV = "BIRDD_POSTGRES_PASSWORD"
POSTGRES_CREDENTIAL = "postgres-password"
DEFAULT_LISTEN = "127.0.0.1:8640"
HUB_TOKEN_ENV = "BIRDD_HUB_TOKEN"
HUB_TOKEN_CREDENTIAL = "hub-token"
CLIP_TOKENS_CREDENTIAL = "hub-clip-tokens"
MIN_TOKEN_CHARS = 16


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HubMqttConfig(Strict):
    host: str = Field("localhost", description="Broker host name or address.")
    port: Optional[int] = Field(
        None, ge=1, le=65535, description="Broker port; unset: 1883, or 8883 with TLS."
    )
    protocol: Literal["3.1.1", "5"] = Field(
        "5",
        description="MQTT protocol: 5 (session expiry below) or 3.1.1 (clean session off; the "
        "broker's persistent_client_expiration applies).",
    )
    client_id: str = Field(
        "birdd-hub",
        min_length=1,
        max_length=128,
        description="Fixed client id: the broker keeps this session (subscriptions and the "
        "messages queued for it) while the hub is away. Two hubs need two ids.",
    )
    topic_prefixes: List[str] = Field(
        default_factory=lambda: ["birdd"],
        min_length=1,
        description="Subscribe to <prefix>/+/detections, …/status and …/stats for each.",
    )
    session_expiry_s: int = Field(
        7 * 86400,
        ge=60,
        le=0xFFFFFFFE,
        description="MQTT 5: how long the broker keeps the session while the hub is away.",
    )
    receive_maximum: int = Field(
        1000,
        ge=1,
        le=65535,
        description="MQTT 5: messages the broker may send before the hub acknowledges; a "
        "message is acknowledged once its row is committed, so this bounds a batch.",
    )
    username: Optional[str] = Field(None, description="User name for the broker.")
    password_env: str = Field(
        DEFAULT_PASSWORD_ENV, description="Environment variable holding the password."
    )
    password_file: Optional[Path] = Field(None, description="File holding the password.")
    tls: Optional[TLSConfig] = Field(None, description="TLS settings; mqtts:// turns it on.")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keep-alive interval.")
    reconnect_min_s: float = Field(0.5, gt=0, le=60, description="First reconnect delay.")
    reconnect_max_s: float = Field(30.0, gt=0, le=3600, description="Longest reconnect delay.")

    @field_validator("topic_prefixes")
    @classmethod
    def _prefixes(cls, values: List[str]) -> List[str]:
        for value in values:
            if not value.strip("/") or any(c in value for c in "#+"):
                raise ValueError("topic prefixes such as 'birdd': no '#', '+' or empty levels")
        return [value.strip("/") for value in values]

    def connection(self) -> MqttConfig:
        """The station's MQTT settings type for what they share (credentials, TLS), so both
        sides read passwords and certificates the same way."""
        keys = ("host", "port", "protocol", "username", "password_env", "password_file", "tls")
        return MqttConfig(enabled=True, **{key: getattr(self, key) for key in keys})


class StoreConfig(Strict):
    sqlite: Path = Field(
        default_factory=lambda: data_dir() / "hub.sqlite",
        description="The embedded database, used when no PostgreSQL DSN is set.",
    )
    postgres: Optional[str] = Field(
        None,
        description="PostgreSQL DSN without a password: 'host=db dbname=birdd user=hub' or "
        "postgresql://hub@db:5432/birdd.",
    )
    password_env: str = Field(
        POSTGRES_PASSWORD_ENV, description="Environment variable holding PostgreSQL's password."
    )
    password_file: Optional[Path] = Field(
        None,
        description="File holding PostgreSQL's password; unset: "
        "$CREDENTIALS_DIRECTORY/postgres-password when it exists.",
    )

    @field_validator("sqlite")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    def password(self) -> Optional[str]:
        """From the environment, else the credential file; None: libpq's own (PGPASSWORD)."""
        from_env = os.environ.get(self.password_env)
        if from_env:
            return from_env
        path = self.password_file
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if path is None and credentials and (Path(credentials) / POSTGRES_CREDENTIAL).is_file():
            path = Path(credentials) / POSTGRES_CREDENTIAL
        if path is None:
            return None
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(
                f"store.password_file {path}: cannot read it ({exc.strerror})"
            ) from None


class IngestConfig(Strict):
    batch_max: int = Field(500, ge=1, le=100_000, description="Messages per transaction, at most.")
    batch_wait_s: float = Field(
        0.0,
        ge=0,
        le=10,
        description="How long the first message of a batch waits for more before the commit; "
        "0: commit what has arrived (batches grow by themselves while a commit is under way).",
    )


class WebConfig(Strict):
    listen: str = Field(
        DEFAULT_LISTEN,
        description="HOST:PORT of the dashboard and the HTTP API; localhost unless told. "
        "Any other address needs a token (token_env or token_file).",
    )
    token_env: str = Field(
        HUB_TOKEN_ENV,
        description="Environment variable holding the access token: with one set, every "
        "request needs 'Authorization: Bearer TOKEN' or basic auth with TOKEN as password.",
    )
    token_file: Optional[Path] = Field(
        None,
        description="File holding the access token; unset: $CREDENTIALS_DIRECTORY/hub-token "
        "when it exists.",
    )
    refresh_s: float = Field(
        5.0, gt=0, le=3600, description="How often an open page fetches new data."
    )

    def token(self) -> Optional[str]:
        """The access token from the environment, else the credential file; None: none."""
        return _secret(self.token_env, self.token_file, HUB_TOKEN_CREDENTIAL, "web.token_file")


def _secret_path(path: Optional[Path], credential: str) -> Optional[Path]:
    """``path``, else the systemd credential ``credential`` when it exists; None: neither."""
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if path is None and credentials and (Path(credentials) / credential).is_file():
        return Path(credentials) / credential
    return path


def _secret(env: str, path: Optional[Path], credential: str, setting: str) -> Optional[str]:
    """A secret from the environment variable ``env``, else the file ``path``, else the
    systemd credential ``credential``; None when none is set."""
    from_env = os.environ.get(env)
    if from_env:
        return from_env
    path = _secret_path(path, credential)
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError as exc:
        raise ValueError(f"{setting} {path}: cannot read it ({exc.strerror})") from None


class ClipsConfig(ClipBudgetConfig):
    dir: Path = Field(
        default_factory=lambda: data_dir() / "hub-clips",
        description="Folder for the clips stations upload (PUT /api/clips/STATION/ID) and "
        "their spectrograms: <dir>/<first 2 hex of the SHA-256>/<SHA-256>.flac and .png.",
    )
    max_mb: float = Field(
        16.0, gt=0, le=1024, description="Largest clip accepted, megabytes (10^6 bytes)."
    )
    tokens_file: Optional[Path] = Field(
        None,
        description="File of the stations allowed to upload: one 'STATION TOKEN' per line "
        "(# comments); unset: $CREDENTIALS_DIRECTORY/hub-clip-tokens when it exists. Without "
        "it the hub takes no clips.",
    )
    min_free_mb: float = Field(
        100.0,
        ge=0,
        description="Free megabytes kept on the clips' disk: below it the hub deletes clips "
        "as for max_total_mb. 0: no floor.",
    )

    @field_validator("dir")
    @classmethod
    def _expand_dir(cls, value: Path) -> Path:
        return value.expanduser()

    def tokens(self) -> Dict[str, str]:
        """Each station's upload token (empty: uploads are refused); ValueError in one line."""
        path = _secret_path(self.tokens_file, CLIP_TOKENS_CREDENTIAL)
        if path is None:
            return {}
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"clips.tokens_file {path}: cannot read it ({exc.strerror})") from None
        return parse_tokens(text, path)


def parse_tokens(text: str, path: Path) -> Dict[str, str]:
    """``STATION TOKEN`` lines as a mapping; ValueError naming the line and the fix."""
    tokens: Dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"clips.tokens_file {path}, line {number}"
        if len(words) != 2:
            raise ValueError(f"{where}: give 'STATION TOKEN' (two words)")
        station, token = words
        if station in tokens:
            raise ValueError(f"{where}: station {station!r} twice; keep one line per station")
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(
                f"{where}: the token is shorter than {MIN_TOKEN_CHARS} characters; make one "
                "with `openssl rand -hex 16`"
            )
        tokens[station] = token
    return tokens


class HubConfig(Strict):
    mqtt: HubMqttConfig = Field(default_factory=HubMqttConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    web: WebConfig = Field(default_factory=WebConfig)
    clips: ClipsConfig = Field(default_factory=ClipsConfig)


def load_hub_config(path: Optional[Path], overrides: Dict[str, Any]) -> HubConfig:
    """``path`` (None: defaults) with the dotted-key ``overrides``; ValueError in one line."""
    data: Dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"{path}: cannot read the hub config ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not YAML ({str(exc).splitlines()[0]})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: the hub config is a mapping (mqtt:, store:, …)")
        data = loaded or {}
    for key, value in overrides.items():
        section, name = key.split(".", 1)
        data.setdefault(section, {})[name] = value
    try:
        return HubConfig(**data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        source = path or "the command line"
        raise ValueError(f"{source}: {where}: {error['msg']}") from None
