"""``storage.housekeeping``: how often the housekeeping thread checks the clips' budget and the
free floor, checkpoints the database's WAL and gives its free pages back to the disk."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class HousekeepingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    clips_every_s: float = Field(
        60.0,
        ge=5.0,
        le=86400.0,
        description="Seconds between checks of the clips' budget (clips.max_total_mb, "
        "clips.max_age_days) and of storage.min_free_mb, deleting clips where needed.",
    )
    checkpoint_every_s: float = Field(
        3600.0,
        ge=60.0,
        le=7 * 86400.0,
        description="Seconds between WAL checkpoints (TRUNCATE: the -wal file back to 0 bytes).",
    )
    vacuum_every_s: float = Field(
        86400.0,
        ge=60.0,
        le=30 * 86400.0,
        description="Seconds between incremental vacuums (free pages back to the disk).",
    )
    vacuum_min_free_fraction: float = Field(
        0.2,
        gt=0.0,
        le=1.0,
        description="A database without incremental vacuum (made by an older birdd) gets one "
        "full VACUUM, when a run ends, once this share of its pages is free.",
    )
