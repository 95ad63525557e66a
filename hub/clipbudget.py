"""The hub's clip budget: the station's rule (``daemon.clips.budget``) over the hub's clips.

Every ``EVERY_S`` (and once at start) the clips the hub holds are weighed against
``clips.max_age_days``, ``clips.max_total_mb`` and the free floor ``clips.min_free_mb`` of
their disk, and what must go goes: the file, its spectrogram, then its row (the detection
stays, without a clip). The order is the station's: each station's surplus beyond its
``keep_per_species_day`` best clips of a species and day first, oldest first, then the
rest, oldest first. Files are content-addressed, so a file several detections share is one
clip here and its rows go together.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

from birdd.daemon.clips.budget import Budget, ClipFile, bytes_to_free, delete_files, select
from birdd.hub.clipfiles import ClipFiles
from birdd.hub.config import ClipsConfig
from birdd.hub.store import Store, StoreError

log = logging.getLogger("birdd")

EVERY_S = 600.0
MB = 1_000_000


class Pass(NamedTuple):
    """What one pass deleted."""

    clips: int
    bytes: int


def budget_of(config: ClipsConfig) -> Budget:
    return Budget(
        max_total_bytes=None if config.max_total_mb is None else int(config.max_total_mb * MB),
        max_age_s=None if config.max_age_days is None else config.max_age_days * 86400,
        keep_per_species_day=config.keep_per_species_day,
    )


def keep_within_budget(store: Store, config: ClipsConfig, now: float) -> Pass:
    """One pass: delete the clips the budget and the free floor say must go."""
    files, rows = _held(store, config.dir)
    chosen = select(files, budget_of(config), now, _bytes_needed(config))
    if not chosen:
        return Pass(0, 0)
    for clip in chosen:
        with contextlib.suppress(OSError):  # rendered on first request: may not exist
            clip.path.with_suffix(".png").unlink(missing_ok=True)
    gone = delete_files(chosen)
    store.forget_clips([detection for clip in gone for detection in rows[clip.path]])
    return Pass(len(gone), sum(clip.size for clip in gone))


def _held(store: Store, folder: Path) -> Tuple[List[ClipFile], Dict[Path, List[str]]]:
    """One ClipFile per file, weighed as its newest detection (time, species, confidence),
    and the detection ids of each file's rows."""
    on_disk = ClipFiles(folder)
    files: Dict[Path, ClipFile] = {}
    rows: Dict[Path, List[str]] = defaultdict(list)
    for held in store.held_clips():
        path = on_disk.audio(held.sha256)
        rows[path].append(held.detection_id)
        clip = ClipFile(
            path,
            held.size,
            held.start_ms / 1000,
            f"{held.station} {held.scientific}",  # each station keeps its own best
            held.detection_id,
            held.confidence,
        )
        files[path] = max(files.get(path, clip), clip, key=_weight)
    return list(files.values()), rows


def _weight(clip: ClipFile) -> tuple:
    return (clip.start, -1.0 if clip.confidence is None else clip.confidence)


def _bytes_needed(config: ClipsConfig) -> int:
    """What the clips' disk needs freed, by the station's rule (0 above the floor)."""
    try:
        free = shutil.disk_usage(str(config.dir)).free
    except OSError:
        return 0  # no folder yet: nothing to delete either
    return bytes_to_free(free, int(config.min_free_mb * MB))


class ClipKeeper:
    """The budget's thread in ``birdd hub serve``, on a connection of its own: a pass at
    start, then every ``every_s``."""

    def __init__(
        self, opener: Callable[[], Store], config: ClipsConfig, every_s: float = EVERY_S
    ) -> None:
        self.config, self.every_s = config, every_s
        self.deleted = 0
        self._opener = opener
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hub clip budget", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        store: Optional[Store] = None
        while not self._stop.is_set():
            try:
                store = store or self._opener()
                self._report(keep_within_budget(store, self.config, time.time()))
            except StoreError as exc:
                log.warning("hub: clips budget: the database: %s (tried again later)", exc)
                if store is not None:
                    store.close()
                store = None
            self._stop.wait(self.every_s)
        if store is not None:
            store.close()

    def _report(self, done: Pass) -> None:
        if done.clips:
            self.deleted += done.clips
            log.info(
                "hub: clips budget: deleted %d clip(s), %.1f MB (clips.max_total_mb, "
                "max_age_days, min_free_mb)",
                done.clips,
                done.bytes / MB,
            )
