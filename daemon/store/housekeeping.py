"""The housekeeping thread: keeps the clips within their budget and the disk above its free
floor, and the database small, without holding up the pipeline.

Live (``birdd run``) it runs on a thread of its own: the clips' budget every
``storage.housekeeping.clips_every_s``, a WAL checkpoint every ``checkpoint_every_s``, an
incremental vacuum every ``vacuum_every_s``; each through its own SQLite connection, waiting
for the sink through the busy timeout. Every run (live or ``--simulate``) ends with one pass of
all three after the sinks have closed, the only time a full VACUUM may run. A pass that fails
(a locked database, an unreadable folder) logs one warning and is tried again next time.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
import time
from contextlib import closing, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

from birdd.daemon.clips.budget import (
    Budget,
    ClipFile,
    bytes_to_free,
    delete_files,
    scan,
    select,
)
from birdd.daemon.config import BirddConfig
from birdd.daemon.store import sqlite_maintenance as db
from birdd.daemon.store.config import HousekeepingConfig

log = logging.getLogger("birdd")


class Housekeeping:
    def __init__(
        self,
        database: Path,
        clips_dir: Optional[Path],
        budget: Budget,
        min_free_bytes: int,
        settings: HousekeepingConfig,
        keep_unsent: bool = False,
    ) -> None:
        """``keep_unsent`` (``clips.upload`` on): clips not yet uploaded go last."""
        self.keep_unsent = keep_unsent
        self.database = database
        self.clips_dir = clips_dir
        self.budget = budget
        self.min_free_bytes = min_free_bytes
        self.settings = settings
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._low: Dict[str, bool] = {}

    @classmethod
    def from_config(cls, config: BirddConfig) -> Housekeeping:
        clips = config.clips
        return cls(
            config.storage.db,
            clips.dir if clips.enabled else None,
            clip_budget(config),
            int(config.storage.min_free_mb * 1e6),
            config.storage.housekeeping,
            keep_unsent=clips.upload.url is not None,
        )

    def rebudget(self, config: BirddConfig) -> None:
        """Take the clips' budget and folder of a reloaded config; the next pass deletes by
        them (clips left in a previous folder are no longer counted)."""
        self.budget = clip_budget(config)
        if self.clips_dir is not None:
            self.clips_dir = config.clips.dir

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="birdd-housekeeping", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def run_once(self, final: bool) -> None:
        """Every task now; ``final`` (the pipeline has stopped) also allows a full VACUUM."""
        self._guarded(self.clips_pass)
        self._guarded(self.checkpoint_pass)
        self._guarded(lambda: self.vacuum_pass(allow_full_vacuum=final))

    def _loop(self) -> None:
        every = self.settings
        tasks = [
            (every.clips_every_s, self.clips_pass),
            (every.checkpoint_every_s, self.checkpoint_pass),
            (every.vacuum_every_s, lambda: self.vacuum_pass(allow_full_vacuum=False)),
        ]
        now = time.monotonic()
        due = [now, now + every.checkpoint_every_s, now + every.vacuum_every_s]
        while not self._stop.wait(max(0.0, min(due) - time.monotonic())):
            for index, (period, task) in enumerate(tasks):
                if time.monotonic() >= due[index]:
                    self._guarded(task)
                    due[index] = time.monotonic() + period

    def _guarded(self, task: Callable[[], object]) -> None:
        try:
            task()
        except (sqlite3.Error, OSError) as exc:
            log.warning("housekeeping: %s (tried again next time)", exc)

    def clips_pass(self) -> List[ClipFile]:
        """Delete the clips the budget and the free floor call for; return them."""
        needed = self._floor_shortfall()
        if self.clips_dir is None:
            return []
        clips = scan(self.clips_dir)
        if not clips:
            return []
        with closing(db.connect(self.database)) as conn:
            confidences = db.clip_confidences(conn, [clip.detection_id for clip in clips])
            unsent = db.unsent_clips(conn) if self.keep_unsent else set()
            clips = [
                replace(
                    c, confidence=confidences.get(c.detection_id), unsent=c.detection_id in unsent
                )
                for c in clips
            ]
            chosen = select(clips, self.budget, time.time(), needed)
            if not chosen:
                return []
            db.forget_clips(conn, [clip.detection_id for clip in chosen])
        gone = delete_files(chosen)
        log.info(
            "housekeeping: deleted %d clip(s), %.1f MB, oldest from %s (clips.max_total_mb, "
            "clips.max_age_days, storage.min_free_mb); their detections stay, with clip_path "
            "NULL%s",
            len(gone),
            sum(clip.size for clip in gone) / 1e6,
            min((clip.day for clip in gone), default="-"),
            _unsent_note(gone),
        )
        return gone

    def checkpoint_pass(self) -> None:
        with closing(db.connect(self.database)) as conn:
            if not db.checkpoint(conn):
                log.debug("housekeeping: WAL checkpoint could not finish (a reader or writer)")

    def vacuum_pass(self, allow_full_vacuum: bool) -> None:
        with closing(db.connect(self.database)) as conn:
            done = db.vacuum(conn, self.settings.vacuum_min_free_fraction, allow_full_vacuum)
        if done:
            log.info("housekeeping: %s on %s", done, self.database)

    def _floor_shortfall(self) -> int:
        """Bytes of clips to delete for the free floor: on the clips' disk, and on the
        database's where the clips share it (a database disk of its own only gets a warning:
        deleting clips cannot help it)."""
        if self.min_free_bytes <= 0:
            return 0
        folders = [self.database.parent] + ([self.clips_dir] if self.clips_dir else [])
        folders = [folder for folder in folders if folder.exists()]
        clips_device = os.stat(self.clips_dir).st_dev if self.clips_dir in folders else None
        shortfall = 0
        for folder in folders:
            free = shutil.disk_usage(folder).free
            low = free < self.min_free_bytes
            helps = os.stat(folder).st_dev == clips_device
            if low and helps:
                shortfall = max(shortfall, bytes_to_free(free, self.min_free_bytes))
            self._tell(folder, low, free, helps)
        return shortfall

    def _tell(self, folder: Path, low: bool, free: int, helps: bool) -> None:
        """One line when a disk falls under the floor and one when it is back above."""
        if low == self._low.get(str(folder), False):
            return
        self._low[str(folder)] = low
        if not low:
            log.warning("housekeeping: %s has %.1f MB free again", folder, free / 1e6)
            return
        action = "deleting clips" if helps else "free space there (birdd deletes only clips)"
        log.warning(
            "housekeeping: %s has %.1f MB free, under storage.min_free_mb (%.0f MB): %s",
            folder,
            free / 1e6,
            self.min_free_bytes / 1e6,
            action,
        )


def _unsent_note(gone: List[ClipFile]) -> str:
    unsent = sum(clip.unsent for clip in gone)
    return f"; {unsent} of them never reached the hub (disk first)" if unsent else ""


def clip_budget(config: BirddConfig) -> Budget:
    clips = config.clips
    return Budget(
        None if clips.max_total_mb is None else int(clips.max_total_mb * 1e6),
        None if clips.max_age_days is None else clips.max_age_days * 86400.0,
        clips.keep_per_species_day,
    )


@contextmanager
def housekeeping_during(config: BirddConfig, live: bool) -> Iterator[Housekeeping]:
    """Run the housekeeping thread while the block runs (live only), then one final pass."""
    keeper = Housekeeping.from_config(config)
    if live:
        keeper.start()
    try:
        yield keeper
    finally:
        keeper.stop()
        keeper.run_once(final=True)
