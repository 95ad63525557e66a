"""The ``clips`` section of the config: where clips go, how much audio around each event, and
the privacy guard that keeps no clip in which the model hears people."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from birdd.engines.models.modeldir import data_dir


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PrivacyConfig(_Strict):
    human_threshold: Optional[float] = Field(
        0.01,
        ge=0.01,
        le=1.0,
        description="A clip is not kept when the model's confidence for any of its human "
        "classes (BirdNET: Human vocal, Human whistle, Human non-vocal) reaches this in any "
        "window that overlaps the clip. null: no speech check (needed for a model without "
        "human classes).",
    )
    drop_detections_within_s: Optional[float] = Field(
        None,
        ge=0.0,
        le=60.0,
        description="Also drop the detection itself when a human class reaches "
        "human_threshold in a window within this many seconds of it (its time says someone "
        "was there). null: detections are never dropped for speech.",
    )

    @model_validator(mode="after")
    def _needs_threshold(self) -> PrivacyConfig:
        if self.drop_detections_within_s is not None and self.human_threshold is None:
            raise ValueError(
                "drop_detections_within_s needs human_threshold: set one or remove the other"
            )
        return self


DEFAULT_TOKEN_ENV = "BIRDD_CLIP_TOKEN"


class UploadConfig(_Strict):
    url: Optional[str] = Field(
        None,
        description="The hub's address, http(s)://HOST:PORT: each clip is sent to "
        "PUT <url>/api/clips/<station id>/<detection id>. null: clips stay on the station.",
    )
    token_env: str = Field(
        DEFAULT_TOKEN_ENV,
        description="Environment variable holding this station's upload token (its line in "
        "the hub's clips.tokens_file).",
    )
    token_file: Optional[Path] = Field(
        None,
        description="File holding the token; unset: $CREDENTIALS_DIRECTORY/clip-token when it "
        "exists.",
    )
    timeout_s: float = Field(30.0, gt=0, le=600, description="One upload's time limit.")
    retry_min_s: float = Field(1.0, gt=0, le=60, description="First wait after a failure.")
    retry_max_s: float = Field(
        300.0, gt=0, le=3600, description="Longest wait between tries (the hub down)."
    )
    drain_timeout_s: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="At the end of a run, how long to wait for the clips not yet uploaded "
        "(those left are sent by the next run).",
    )

    @field_validator("url")
    @classmethod
    def _http(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("give the hub's address as http://HOST:PORT or https://HOST:PORT")
        return None if value is None else value.rstrip("/")


class ClipBudgetConfig(_Strict):
    """A clips folder's size and age budget, the same on a station and on the hub
    (``daemon.clips.budget``; the hub keeps each station's best clips apart)."""

    max_total_mb: Optional[float] = Field(
        None,
        gt=0,
        description="Most megabytes (10^6 bytes) the clips may fill; beyond it the "
        "housekeeping deletes clips (the surplus beyond keep_per_species_day first, oldest "
        "first). null: no size limit (the free floor still holds).",
    )
    max_age_days: Optional[float] = Field(
        None, gt=0, description="Delete clips older than this many days. null: no age limit."
    )
    keep_per_species_day: int = Field(
        10,
        ge=1,
        description="When clips must go, each species (on the hub: of each station) keeps "
        "its this many best-confidence clips of a UTC day until the others (its surplus) are "
        "gone.",
    )


class ClipsConfig(ClipBudgetConfig):
    enabled: bool = Field(
        False, description="Save the audio of every detection event (`--clips DIR` turns it on)."
    )
    dir: Path = Field(
        default_factory=lambda: data_dir() / "clips",
        description="Folder for the clips, one subfolder per UTC day of the clip's start.",
    )
    pre_s: float = Field(
        1.0, ge=0.0, le=30.0, description="Seconds of audio kept before the event starts."
    )
    post_s: float = Field(
        1.0, ge=0.0, le=30.0, description="Seconds of audio kept after the event ends."
    )
    format: Literal["flac", "wav"] = Field(
        "flac", description="flac or wav, 16-bit mono at the model's rate (48 kHz for BirdNET)."
    )
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    upload: UploadConfig = Field(default_factory=UploadConfig)

    @field_validator("dir")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @model_validator(mode="after")
    def _upload_flac(self) -> ClipsConfig:
        if self.upload.url is not None and self.format != "flac":
            raise ValueError("upload.url needs format: flac (the hub keeps FLAC clips)")
        return self
