"""The clips' disk budget: which clip files to delete when the folder is over its size or age
budget, or its disk under the free floor.

The rule (docs/clips.md, "Disk budget"):

1. Clips older than ``clips.max_age_days`` go, whatever the space.
2. Then, while the folder is over ``clips.max_total_mb`` or its disk needs space, clips go in
   this order: first the *surplus* (beyond the ``clips.keep_per_species_day`` clips of highest
   confidence of their species and UTC day; a clip whose detection row is gone counts as the
   lowest confidence), oldest first; then every other clip, oldest first.

So repeats go before variety: a dawn chorus of 300 robin clips loses its weakest robins before
yesterday's one warbler. With ``clips.upload`` on, a clip not yet on the hub (*unsent*) never
expires and goes only after every sent one, in the same order among themselves: the disk's
floor and the size budget still win over the upload. Detection rows are never deleted here;
the caller marks the rows of deleted clips.
"""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

CLIP_SUFFIXES = (".flac", ".wav")
FLOOR_MARGIN = 0.1
RESUME_HEADROOM = 4_000_000
"""Stopped clips resume once this many bytes more than the floor are free (and the clip
fits), so that a disk at the edge does not stop and resume them clip after clip."""


@dataclass(frozen=True)
class ClipFile:
    """One clip on disk, known from its name (``<UTC start>_<species>_<detection id>``)."""

    path: Path
    size: int
    start: float
    """The clip's first sample, seconds since the epoch (UTC)."""
    species: str
    detection_id: str
    confidence: Optional[float] = None
    """Its detection's confidence; None when the row is gone (purged, another database)."""
    unsent: bool = False
    """Waiting to be uploaded to the hub (``clips.upload``): deleted last, never for age."""

    @property
    def day(self) -> str:
        return datetime.fromtimestamp(self.start, timezone.utc).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class Budget:
    """What the clips folder may hold; None: no limit of that kind."""

    max_total_bytes: Optional[int]
    max_age_s: Optional[float]
    keep_per_species_day: int


def parse_clip(path: Path, size: int) -> Optional[ClipFile]:
    """The clip a file name describes; None for a file birdd did not name (left alone)."""
    parts = path.stem.split("_")
    if path.suffix not in CLIP_SUFFIXES or len(parts) != 3:
        return None
    stamp, species, detection_id = parts
    try:
        began = datetime.strptime(stamp, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return ClipFile(path, size, began.timestamp(), species, detection_id)


def scan(folder: Path) -> List[ClipFile]:
    """Every clip in the day folders of ``folder`` (``.part`` files and strangers skipped)."""
    clips: List[ClipFile] = []
    if not folder.is_dir():
        return clips
    for day in os.scandir(folder):
        if not day.is_dir(follow_symlinks=False):
            continue
        for entry in os.scandir(day.path):
            if entry.is_file(follow_symlinks=False):
                clip = parse_clip(Path(entry.path), entry.stat().st_size)
                if clip is not None:
                    clips.append(clip)
    return clips


def bytes_to_free(free: int, min_free_bytes: int) -> int:
    """Under the free floor: what to delete to reach 10% more than the floor, at least
    ``RESUME_HEADROOM`` more (stopped clips then resume with room to spare, and a disk at the
    edge is not trimmed clip by clip); 0 at or above the floor."""
    if free >= min_free_bytes:
        return 0
    return min_free_bytes + max(int(min_free_bytes * FLOOR_MARGIN), RESUME_HEADROOM) - free


def select(
    clips: Sequence[ClipFile], budget: Budget, now: float, bytes_needed: int
) -> List[ClipFile]:
    """The clips to delete: the expired ones, then in deletion order as many as it takes to
    bring the rest within ``max_total_bytes`` and to free ``bytes_needed`` (the free floor's
    shortfall) in all."""
    cutoff = None if budget.max_age_s is None else now - budget.max_age_s
    old = [cutoff is not None and c.start < cutoff and not c.unsent for c in clips]
    expired = [clip for clip, gone in zip(clips, old) if gone]
    kept = [clip for clip, gone in zip(clips, old) if not gone]
    over = 0
    if budget.max_total_bytes is not None:
        over = _total(kept) - budget.max_total_bytes
    need = max(over, bytes_needed - _total(expired))
    chosen: List[ClipFile] = []
    freed = 0
    for clip in deletion_order(kept, budget.keep_per_species_day):
        if freed >= need:
            break
        chosen.append(clip)
        freed += clip.size
    return expired + chosen


def deletion_order(clips: Iterable[ClipFile], keep_per_species_day: int) -> List[ClipFile]:
    """The surplus of each species and day (beyond its best ``keep_per_species_day``), oldest
    first, then the rest, oldest first; the unsent clips after all the others."""
    groups: Dict[tuple, List[ClipFile]] = defaultdict(list)
    for clip in clips:
        groups[(clip.species, clip.day)].append(clip)
    surplus: List[ClipFile] = []
    rest: List[ClipFile] = []
    for group in groups.values():
        ranked = sorted(group, key=_best_first)
        rest.extend(ranked[:keep_per_species_day])
        surplus.extend(ranked[keep_per_species_day:])
    order = sorted(surplus, key=_oldest_first) + sorted(rest, key=_oldest_first)
    return [clip for clip in order if not clip.unsent] + [clip for clip in order if clip.unsent]


def _best_first(clip: ClipFile) -> tuple:
    confidence = -1.0 if clip.confidence is None else clip.confidence
    return (-confidence, -clip.start)  # a tie keeps the newer clip


def _oldest_first(clip: ClipFile) -> tuple:
    return (clip.start, str(clip.path))


def _total(clips: Iterable[ClipFile]) -> int:
    return sum(clip.size for clip in clips)


def delete_files(clips: Iterable[ClipFile]) -> List[ClipFile]:
    """Delete the files (a day folder left empty goes too); return those now gone."""
    gone = []
    for clip in clips:
        try:
            clip.path.unlink(missing_ok=True)
        except OSError:
            continue  # kept; its row has lost its path and it is tried again next time
        gone.append(clip)
        with contextlib.suppress(OSError):  # a day folder not yet empty stays
            clip.path.parent.rmdir()
    return gone
