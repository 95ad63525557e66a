"""Where a recording's start time comes from in simulate mode, and saying which was used."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional, Tuple

from birdd.daemon.records import parse_iso_utc

# AudioMoth (20210502_040000.WAV), Song Meter (S4A03895_20190522_060000.wav, SMM_20190522_...),
# and most recorders that follow them: 8 date digits, a separator, 6 time digits.
RECORDER_STAMP = re.compile(r"(?<!\d)(\d{4})(\d{2})(\d{2})[_T-](\d{2})(\d{2})(\d{2})(?!\d)")


def time_from_filename(name: str) -> Optional[datetime]:
    """The ``YYYYMMDD_HHMMSS`` stamp in a file name, read as UTC (AudioMoth writes UTC)."""
    for match in RECORDER_STAMP.finditer(name):
        try:
            year, month, day, hour, minute, second = (int(group) for group in match.groups())
            return datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
        except ValueError:
            continue
    return None


def recording_start(
    path: Path, explicit: Optional[str], duration_s: float, mtime_ns: Optional[int] = None
) -> Tuple[datetime, str]:
    """Return the start time and its origin: --start-time, the file name, else the mtime
    (``mtime_ns`` when given: the file is on another machine; else the file's own).

    A recorder closes its file when it stops recording, so the modification time marks the
    end of the recording: the start is the mtime minus the duration.
    """
    if explicit:
        moment = parse_iso_utc(explicit)
        if moment is None:
            raise ValueError(
                f"--start-time {explicit!r} is not an ISO 8601 time: use e.g. 2024-05-02T04:00:00Z"
            )
        return moment, "--start-time"
    stamped = time_from_filename(path.name)
    if stamped is not None:
        return stamped, "file name (read as UTC)"
    seconds = path.stat().st_mtime if mtime_ns is None else mtime_ns / 1e9
    mtime = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return mtime - timedelta(seconds=duration_s), "file modification time minus duration"
