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


class ClipsConfig(_Strict):
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
    max_total_mb: Optional[float] = Field(
        None,
        gt=0,
        description="Most megabytes (10^6 bytes) the clips may fill; beyond it the "
        "housekeeping deletes clips (the surplus beyond keep_per_species_day first, oldest "
        "first). null: no size limit (storage.min_free_mb still holds).",
    )
    max_age_days: Optional[float] = Field(
        None, gt=0, description="Delete clips older than this many days. null: no age limit."
    )
    keep_per_species_day: int = Field(
        10,
        ge=1,
        description="When clips must go, each species keeps its this many best-confidence "
        "clips of a UTC day until the others (its surplus) are gone.",
    )

    @field_validator("dir")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()
