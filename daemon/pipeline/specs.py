"""What a pipeline is built from (its sources and settings) and what it counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from birdd.daemon.clips.stage import ClipSettings
from birdd.daemon.clips.writer import ClipCounts
from birdd.daemon.pipeline.clock import LiveClock
from birdd.daemon.postprocess.gate import GateCounts
from birdd.daemon.records import Channel, Clock, Gap
from birdd.daemon.sources.base import AudioSource

DEFAULT_SILENCE_WARN_S = 60.0


@dataclass
class PipelineSettings:
    channels: Sequence[Channel] = ("mix",)
    """The streams cut from every source: the downmix, one channel, or several separately."""
    overlap_s: float = 0.0
    ring_buffer_s: float = 120.0
    realtime_factor: Optional[float] = None
    """Pace a file source at this multiple of real time (simulate --realtime); None = flat out."""
    silence_warn_s: float = DEFAULT_SILENCE_WARN_S
    clips: Optional[ClipSettings] = None
    """Detection clips and the privacy guard (None: neither)."""


@dataclass
class PipelineStats:
    sample_rate: int
    samples: int = 0
    windows: int = 0
    windows_dropped: int = 0
    windows_unscored: int = 0
    """Windows the engine failed on and that were skipped (each recorded as a gap)."""
    detections: int = 0
    gate: Optional[GateCounts] = None
    """What the bird / no-bird gate did (None: no gate)."""
    clips: Optional[ClipCounts] = None
    """What became of the clips (None: no clip stage)."""
    engine_seconds: float = 0.0
    wall_seconds: float = 0.0
    gaps: List[Gap] = field(default_factory=list)

    @property
    def audio_seconds(self) -> float:
        return self.samples / self.sample_rate

    @property
    def realtime_factor(self) -> float:
        """Audio seconds processed per wall-clock second."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0


@dataclass(frozen=True)
class SourceSpec:
    """A source and the clock that dates its samples at the model's rate: a ``StreamClock``
    from the recording's start, or a ``LiveClock`` that the capture anchors to the audio
    clock."""

    source: AudioSource
    clock: Clock

    @property
    def live_clock(self) -> Optional[LiveClock]:
        """The clock for the capture to anchor; None when it needs no anchoring."""
        return self.clock if isinstance(self.clock, LiveClock) else None
