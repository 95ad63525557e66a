"""Settings of the post-processing stage: from raw model scores to detection events."""

from __future__ import annotations

from typing import Dict, List, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator
from typing_extensions import Annotated

# Default minimum confidence per mode. Unattended live use needs precision: every false report
# reaches the hub and nobody reviews it, so live uses BirdNET-Go's 0.8; on the shared negative
# recordings (speech, dog howl, whale, cicada, ...) no bird passes 0.8 (the worst false
# positive is 0.75). Simulate mode feeds a person's review of an archive, so it keeps more
# recall at 0.5 (BirdNET-Analyzer's research default is 0.25); docs/postprocessing.md lists
# the negatives that pass 0.5.
LIVE = 0.8
SIMULATE = 0.5

Confidence = Annotated[float, Field(ge=0.01, le=0.99)]


def default_min_confidence(live: bool) -> float:
    """The minimum confidence used when ``min_confidence`` is not set."""
    return LIVE if live else SIMULATE


class LocationConfig(BaseModel):
    """Report only species the location/week model expects at the station."""

    model_config = ConfigDict(extra="forbid")

    lat: float = Field(..., ge=-90.0, le=90.0, description="Latitude of the station, degrees.")
    lon: float = Field(..., ge=-180.0, le=180.0, description="Longitude of the station, degrees.")
    week: Optional[int] = Field(
        None,
        description="Week of the year as BirdNET counts it (1–48, four per month) or -1 for the "
        "whole year; unset: the week of the audio being analysed, following the calendar.",
    )
    threshold: float = Field(
        0.03,
        ge=0.0,
        lt=1.0,
        description="Minimum occurrence probability from the location model (BirdNET: 0.03).",
    )

    @field_validator("week")
    @classmethod
    def _week_in_range(cls, week: Optional[int]) -> Optional[int]:
        if week is not None and week != -1 and not 1 <= week <= 48:
            raise ValueError("week must be -1 (whole year) or 1..48")
        return week


class GateConfig(BaseModel):
    """A bird / no-bird gate (``birdd train gate``) on the classifier's embeddings: in windows
    it calls no-bird, bird detections are dropped (non-bird classes are kept)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        ...,
        min_length=1,
        description="The gate's model file (gate.onnx, with gate.json and gate.npz beside it).",
    )
    threshold: float = Field(
        0.5,
        ge=0.01,
        le=0.99,
        description="The gate's bird probability at or above which a window counts as bird.",
    )


class PostprocessConfig(BaseModel):
    """How scores become detections: activation, thresholds, class filters and events."""

    model_config = ConfigDict(extra="forbid")

    sensitivity: float = Field(
        1.0,
        ge=0.5,
        le=1.5,
        description="Slope of the sigmoid applied to logits: confidence = "
        "1 / (1 + exp(-sensitivity * logit)). Higher reports more (BirdNET-Analyzer's option).",
    )
    min_confidence: Optional[float] = Field(
        None,
        ge=0.01,
        le=0.99,
        description=f"Minimum confidence of a detection; unset: {LIVE} live, {SIMULATE} in "
        "simulate mode.",
    )
    model_thresholds: bool = Field(
        True,
        description="Use the per-class thresholds in the model's sidecar (written by 'birdd "
        "train') for the classes that have one; other classes use min_confidence. False: "
        "min_confidence for every class. '--min-conf' on the command line sets it false.",
    )
    species_thresholds: Dict[str, Confidence] = Field(
        default_factory=dict,
        description="Per-species minimum confidence (species name → threshold); wins over the "
        "model's threshold and min_confidence for that species.",
    )
    include: List[str] = Field(
        default_factory=list,
        description="Report only these species (empty: all). Names are labels "
        "('Scientific_Common'), scientific or common names or eBird codes, any case. A listed "
        "species is reported even if it is a non-bird class or the location filter drops it.",
    )
    exclude: List[str] = Field(
        default_factory=list,
        description="Never report these species (same names as include); wins over include.",
    )
    non_birds: bool = Field(
        False,
        description="Also report the model's non-bird classes (human voice, dog, engine, noise, "
        "frogs, insects), tagged is_bird: false.",
    )
    location: Optional[LocationConfig] = Field(
        None, description="Location/week filter; unset: every species anywhere on Earth."
    )
    merge: bool = Field(
        True,
        description="Merge detections of one species in consecutive or overlapping windows "
        "into one event (start of the first window, end of the last, highest confidence).",
    )
    max_event_s: float = Field(
        60.0,
        gt=0.0,
        le=3600.0,
        description="An event that reaches this length is reported and the next window starts "
        "a new one, so a bird that sings on is reported again.",
    )
    hold_down_s: float = Field(
        15.0,
        ge=0.0,
        le=3600.0,
        description="Live mode: a new event of a species that starts less than this many "
        "seconds after the end of its last reported event is not reported (BirdNET-Go: 15). "
        "Off in simulate mode.",
    )
    per_window: bool = Field(
        False,
        description="One detection per window and species, as BirdNET-Analyzer reports; turns "
        "merge and hold-down off.",
    )
    gate: Optional[GateConfig] = Field(
        None,
        description="A bird / no-bird gate: bird detections are dropped in windows it calls "
        "no-bird. Unset: no gate.",
    )
