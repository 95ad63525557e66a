"""The machine under the station: free disk, the clock, and the state folder and database."""

from __future__ import annotations

import getpass
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

from birdd.daemon.app.doctor.base import Context, Result, fail, ok, warn
from birdd.daemon.store.sqlite_health import integrity_findings

WARN_FREE_BYTES = 1_000_000_000
FAIL_FREE_BYTES = 200_000_000
"""SQLite needs room for its WAL and the clips and logs grow too: under 200 MB a full disk is
hours away on a busy dawn chorus."""
TIME_DAEMONS = ("chronyd", "ntpd", "systemd-timesyncd", "openntpd")
TIME_DAEMON_PATHS = (
    "/usr/sbin/chronyd",
    "/usr/sbin/ntpd",
    "/lib/systemd/systemd-timesyncd",
    "/usr/lib/systemd/systemd-timesyncd",
    "/usr/sbin/openntpd",
)
COMM_LENGTH = 15
"""The kernel keeps the first 15 characters of a process name in /proc/PID/comm."""
SET_NTP = "sudo timedatectl set-ntp true"


def existing_ancestor(path: Path) -> Path:
    """``path`` itself or its nearest ancestor that exists."""
    return next((folder for folder in (path, *path.parents) if folder.exists()), Path("/"))


def free_space_status(free: int) -> str:
    """'FAIL' under 200 MB, 'warn' under 1 GB, else 'ok'."""
    if free < FAIL_FREE_BYTES:
        return "FAIL"
    return "warn" if free < WARN_FREE_BYTES else "ok"


def check_disk(ctx: Context) -> List[Result]:
    """Free space where the database lives, and where the clips go when they are on."""
    return [_free_space(folder, key) for key, folder in _folders(ctx)]


def _folders(ctx: Context) -> List[Tuple[str, Path]]:
    """(config key, folder) of what birdd writes: the database's folder, the clips'."""
    assert ctx.config is not None
    folders = [("storage.db", ctx.config.storage.db.parent)]
    if ctx.config.clips.enabled:
        folders.append(("clips.dir", ctx.config.clips.dir))
    return folders


def _free_space(folder: Path, key: str) -> Result:
    where = existing_ancestor(folder)
    usage = shutil.disk_usage(where if where.is_dir() else where.parent)
    detail = f"{usage.free / 1e9:.2f} GB free of {usage.total / 1e9:.1f} GB at {folder}"
    status = free_space_status(usage.free)
    fix = (
        "free space on that disk (old recordings; journalctl --vacuum-size=100M), set "
        f"storage.retention_days, or move {key} to a larger disk"
    )
    if status == "FAIL":
        return fail("disk", f"{detail} (under {FAIL_FREE_BYTES / 1e6:.0f} MB)", fix)
    if status == "warn":
        return warn("disk", f"{detail} (under {WARN_FREE_BYTES / 1e9:.0f} GB)", fix)
    return ok("disk", detail)


def check_clock(ctx: Context) -> List[Result]:
    """Is the clock kept in sync? Detections carry its time, so it is only as good as it."""
    if Path("/run/systemd/system").is_dir() and shutil.which("timedatectl"):
        return [_timedatectl()]
    return [_time_daemon(_running_names(), _installed_daemons())]


def _timedatectl() -> Result:
    command = ["timedatectl", "show", "-p", "NTPSynchronized", "--value"]
    try:
        answer = subprocess.run(command, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return warn("clock", f"timedatectl did not answer ({exc})", SET_NTP)
    value = answer.stdout.strip()
    if answer.returncode != 0 or value not in ("yes", "no"):
        reason = answer.stderr.strip().splitlines()[:1] or [f"status {answer.returncode}"]
        return warn("clock", f"timedatectl failed: {reason[0]}", SET_NTP)
    if value == "yes":
        return ok("clock", "synchronised (timedatectl: NTPSynchronized=yes)")
    return warn(
        "clock",
        "not synchronised (timedatectl: NTPSynchronized=no): detection times are only as "
        "good as the clock",
        f"{SET_NTP}, and let the station reach an NTP server (UDP 123)",
    )


def _running_names() -> List[str]:
    names = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            names.append(comm.read_text().strip())
        except OSError:
            continue  # the process ended while we looked
    return names


def _installed_daemons() -> List[str]:
    return [Path(path).name for path in TIME_DAEMON_PATHS if Path(path).is_file()]


def _time_daemon(running: Iterable[str], installed: Iterable[str]) -> Result:
    """Without systemd: which time daemon runs (synchronisation itself is not asked)."""
    running_set = set(running)
    found = [name for name in TIME_DAEMONS if name[:COMM_LENGTH] in running_set]
    if found:
        return ok("clock", f"{found[0]} is running (no systemd here to ask whether it is synced)")
    present = list(installed)
    if present:
        return warn(
            "clock",
            f"{present[0]} is installed but not running: detection times are only as good "
            "as the clock",
            f"start it ({SET_NTP} under systemd)",
        )
    return warn(
        "clock",
        "no time daemon (chrony, ntpd, systemd-timesyncd): detection times are only as good "
        "as the clock",
        f"sudo apt install chrony (or {SET_NTP})",
    )


def check_state(ctx: Context) -> List[Result]:
    """The folders birdd writes (the database's, the clips') can be written by this user, and
    the database passes quick_check."""
    results = [_writable(folder, key) for key, folder in _folders(ctx)]
    if results[0].status == "ok":
        assert ctx.config is not None
        results.insert(1, _database(ctx.config.storage.db))
    return results


def _writable(folder: Path, key: str) -> Result:
    check = "state dir" if key == "storage.db" else "clips dir"
    user = getpass.getuser()
    problem = unwritable(folder)
    if problem is not None:
        fix = f"create it for the service's user (sudo install -d -o {user} {folder}) or set "
        return fail(check, problem, f"{fix}{key} to a writable path")
    exists = "exists" if folder.is_dir() else "can be created"
    return ok(check, f"{folder} {exists} and is writable by {user}")


def unwritable(folder: Path) -> Optional[str]:
    """Why this user cannot create files in ``folder`` (made on the way if missing), or None.

    Tried with a real temporary file, not ``os.access``: root passes every permission test
    but still cannot write to a read-only mount."""
    where = existing_ancestor(folder)
    if not where.is_dir():
        return f"{where} is a file, so the folder {folder} cannot be made"
    try:
        with tempfile.TemporaryFile(dir=where, prefix=".birdd-doctor-"):
            pass
    except OSError as exc:
        return f"{where} is not writable by {getpass.getuser()} ({exc.strerror})"
    return None


def _database(db: Path) -> Result:
    if not db.exists():
        return ok("database", f"{db} does not exist yet (the first run creates it)")
    if not db.is_file():
        return fail("database", f"{db} is not a file", "set storage.db to a database file")
    fix = (
        "'birdd run' moves a damaged database aside and starts a new one; 'birdd db check' "
        "lists the damage (docs/deployment.md#backups-and-damaged-databases)"
    )
    try:
        findings = integrity_findings(db, "quick_check")
    except sqlite3.Error as exc:
        return fail("database", f"{db} cannot be opened ({exc})", "check its owner and mode")
    if findings:
        return fail("database", f"{db} is damaged: {'; '.join(findings[:2])}", fix)
    return ok("database", f"{db} ({db.stat().st_size / 1e6:.1f} MB) passes PRAGMA quick_check")
