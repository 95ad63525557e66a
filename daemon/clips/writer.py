"""The clip writer: its own thread, fed through a bounded queue, cuts each clip from the capture
ring, writes it and passes the detection on with its clip.

Live, a full queue refuses the clip (counted) and the detection goes on without one, so a slow
disk never holds up inference; in simulate mode the queue waits (nothing is dropped). A clip
whose audio the ring already overwrote is dropped and counted the same way.

A disk under ``storage.min_free_mb`` (checked before every clip) or full (ENOSPC) stops clips,
not detections: each clip not written is counted in ``clips_dropped_disk``, and one line is
logged when clips stop and one when they resume."""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import queue
import shutil
import threading
from collections import Counter
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable, Dict, NamedTuple, Optional, Sequence

import numpy as np
import soundfile

from birdd.daemon.clips.budget import RESUME_HEADROOM
from birdd.daemon.clips.spans import ClipSpan, clip_name
from birdd.daemon.pipeline.ring import RingBuffer
from birdd.daemon.records import ClipInfo, Detection

log = logging.getLogger("birdd")

QUEUE_SIZE = 16
WARN_EVERY = 100
"""Of clips that cannot be written, the first and every 100th after it are logged."""
FORMATS = {"flac": "FLAC", "wav": "WAV"}
Publish = Callable[[Sequence[Detection]], None]


@dataclass
class ClipCounts:
    """What became of the clips (``clips_on``: clips are saved at all) and, with
    ``drop_detections_within_s``, of detections."""

    clips_on: bool = True
    written: int = 0
    dropped_privacy: int = 0
    dropped_backlog: int = 0
    failed: int = 0
    dropped_disk: int = 0
    detections_dropped_privacy: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, name: str) -> None:
        """Count one (from the inference thread or the writer's)."""
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def to_stats(self) -> Dict[str, int]:
        """The ``…/stats`` fields: ``detections_dropped_privacy``, and with clips on
        ``clips_written``, ``clips_dropped_privacy``, …"""
        named = {item.name: getattr(self, item.name) for item in fields(self)}
        del named["clips_on"]
        near = named.pop("detections_dropped_privacy")
        counted = {f"clips_{name}": value for name, value in named.items()}
        return {**(counted if self.clips_on else {}), "detections_dropped_privacy": near}


class RingHold:
    """Keeps one stream's ring from overwriting audio that a clip still needs: the oldest
    start of a clip not yet cut, or, for clips of events still to come, a floor that follows
    the analysis."""

    def __init__(self, ring: RingBuffer) -> None:
        self.ring = ring
        self._lock = threading.Lock()
        self._starts: Counter = Counter()
        self._floor = 0
        ring.hold(0)

    def keep(self, start: int) -> None:
        with self._lock:
            self._starts[start] += 1
            self._apply()

    def done(self, start: int) -> None:
        with self._lock:
            self._starts[start] -= 1
            if self._starts[start] <= 0:
                del self._starts[start]
            self._apply()

    def advance(self, floor: int) -> None:
        with self._lock:
            if floor > self._floor:
                self._floor = floor
                self._apply()

    def _apply(self) -> None:
        self.ring.hold(min([self._floor, *self._starts]))


@dataclass(frozen=True)
class ClipJob:
    """A detection to pass on, with the clip to cut first (None: pass it on as it is)."""

    detection: Detection
    span: Optional[ClipSpan] = None
    hold: Optional[RingHold] = None


class DiskGuard:
    """Whether the clips' disk has room: above the free floor, and not found full by the last
    write. Logs once when clips stop for want of space and once when they resume."""

    def __init__(self, folder: Path, min_free_bytes: int) -> None:
        self.folder = folder
        self.min_free_bytes = min_free_bytes
        self.stopped = False

    def free(self) -> int:
        return shutil.disk_usage(self.folder).free

    def room(self, needed: int) -> bool:
        """True when a clip of up to ``needed`` bytes may be written (resuming clips, with a
        line, if they had stopped: stopped clips wait for ``RESUME_HEADROOM`` above the
        floor)."""
        free = self.free()
        if free < self.min_free_bytes:
            floor = self.min_free_bytes / 1e6
            self.stop(f"{free / 1e6:.1f} MB free, under storage.min_free_mb ({floor:g} MB)")
            return False
        if self.stopped and free < max(needed, self.min_free_bytes + RESUME_HEADROOM):
            return False
        if self.stopped:
            self.stopped = False
            log.warning("clips resumed: %s has %.1f MB free", self.folder, free / 1e6)
        return True

    def stop(self, why: str) -> None:
        if not self.stopped:
            self.stopped = True
            log.warning(
                "clips stopped: %s has %s; detections go on without clips (counted in "
                "clips_dropped_disk) until space is freed",
                self.folder,
                why,
            )

    def full(self, exc: BaseException, needed: int) -> bool:
        """Whether a failed write failed for want of space (libsndfile loses the errno: then
        the disk counts as full when less than the clip's raw size is free)."""
        code = getattr(exc, "errno", None)
        if code in (errno.ENOSPC, errno.EDQUOT):
            return True
        try:
            return self.free() < needed
        except OSError:
            return False


class ClipTarget(NamedTuple):
    folder: Path
    fmt: str
    disk: DiskGuard


def _room(disk: DiskGuard, needed: int) -> bool:
    try:
        return disk.room(needed)
    except OSError:
        return True  # the folder is gone or unreadable: the write says why


class ClipWriter:
    def __init__(
        self,
        folder: Path,
        fmt: str,
        rate: int,
        publish: Publish,
        live: bool,
        counts: ClipCounts,
        min_free_bytes: int = 0,
    ) -> None:
        self.target = ClipTarget(folder, fmt, DiskGuard(folder, min_free_bytes))
        """Where and how clips are written; a reload swaps it whole, for the next clip."""
        self.rate = rate
        self.live = live
        self.counts = counts
        self._publish = publish
        self._jobs: queue.Queue = queue.Queue(QUEUE_SIZE)
        self._ended = threading.Event()

    def retarget(self, folder: Path, fmt: str) -> None:
        """Write the next clips to ``folder`` as ``fmt`` (a config reload)."""
        floor = self.target.disk.min_free_bytes
        self.target = ClipTarget(folder, fmt, DiskGuard(folder, floor))

    def submit(self, job: ClipJob) -> bool:
        """Queue a job; False when it was not: live, at once when the queue is full; in
        simulate mode (which waits) only once the writer has ended."""
        return self._put(job, wait=not self.live)

    def close(self) -> None:
        """No more jobs: the thread writes those queued and returns."""
        self._put(None, wait=True)

    def run(self) -> None:
        """The writer thread's loop, until ``close``."""
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                self._publish([self._done(job)])
        finally:
            self._ended.set()

    def _put(self, job: Optional[ClipJob], wait: bool) -> bool:
        while not self._ended.is_set():
            try:
                self._jobs.put(job, timeout=0.2 if wait else None, block=wait)
                return True
            except queue.Full:
                if not wait:
                    return False
        return False

    def _done(self, job: ClipJob) -> Detection:
        if job.span is None or job.hold is None:
            return job.detection
        target = self.target
        try:
            audio = self._cut(job.span, job.hold)
        finally:
            job.hold.done(job.span.start)
        if audio is None:
            self.counts.add("dropped_backlog")
            return job.detection
        needed = audio.size * 2 + 4096  # 16-bit samples and a header: FLAC's most
        if not _room(target.disk, needed):
            self.counts.add("dropped_disk")
            return job.detection
        try:
            clip = self._write(target, job.detection, job.span, audio)
        except (OSError, RuntimeError) as exc:  # soundfile's LibsndfileError is a RuntimeError
            if target.disk.full(exc, needed):
                target.disk.stop(f"no space left ({exc})")
                self.counts.add("dropped_disk")
                return job.detection
            self.counts.add("failed")
            if self.counts.failed % WARN_EVERY == 1:  # a full disk fails every clip: warn less
                log.warning(
                    "clip of detection %s not saved (%d so far; counted in clips_failed): %s",
                    job.detection.id,
                    self.counts.failed,
                    exc,
                )
            return job.detection
        self.counts.add("written")
        return replace(job.detection, clip=clip)

    def _cut(self, span: ClipSpan, hold: RingHold) -> Optional[np.ndarray]:
        """The clip's samples (fewer where the stream ended); None when the ring overwrote
        some before they were cut."""
        audio = np.zeros(span.end - span.start, dtype=np.float32)
        first, end = hold.ring.read_span(span.start, audio)
        if first > span.start:
            log.debug("clip at sample %d: overwritten up to %d", span.start, first)
            return None
        return audio[: max(0, end - span.start)]

    def _write(
        self, target: ClipTarget, detection: Detection, span: ClipSpan, audio: np.ndarray
    ) -> ClipInfo:
        """Encode in memory (hashed there, not read back from disk), then write through a
        temporary name and rename, so no half-written clip is ever seen."""
        encoded = io.BytesIO()
        fmt = target.fmt
        soundfile.write(encoded, audio, self.rate, subtype="PCM_16", format=FORMATS[fmt])
        data = encoded.getvalue()
        path = (target.folder / clip_name(detection, span, self.rate, fmt)).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        try:
            partial.write_bytes(data)
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)
        digest = hashlib.sha256(data).hexdigest()
        return ClipInfo(str(path), round(len(audio) / self.rate, 6), digest)
