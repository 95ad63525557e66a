"""A disk that really fills: `birdd --simulate` with `--clips` into an 8 MB tmpfs (the database
on another filesystem) writes clips until the free floor or ENOSPC, then stops clips, not
detections, with one line and the `clips_dropped_disk` count; the housekeeping pass at the end
of the run deletes the oldest clips and NULLs their rows' clip_path. Needs root (mount); the
real BirdNET model on eight copies of the 30 s thrush soundscape (240 s, 68 detections)."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import numpy as np
import pytest
import soundfile
from birdd_testing import RATE, THRUSH, jsonl_rows, read_mono, recording, run_birdd

pytestmark = pytest.mark.system

TMPFS_MB = 8


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MB tmpfs, unmounted afterwards; skipped where mounting is not permitted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.fixture(scope="module")
def long_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "thrush_x8.wav"
    soundfile.write(str(path), np.tile(read_mono(recording(THRUSH)), 8), RATE, subtype="FLOAT")
    return path


def simulate(path: Path, folder: Path, clips: Path, settings: dict) -> Tuple[str, List[dict]]:
    config = folder / "config.yaml"
    config.write_text(json.dumps(settings))  # JSON is YAML
    result = run_birdd(
        *("--simulate", str(path), "--min-conf", "0.4", "--format", "jsonl"),
        *("--db", str(folder / "db.sqlite"), "--start-time", "2024-05-02T04:00:00Z"),
        *("--config", str(config), "--clips", str(clips)),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr, jsonl_rows(result.stdout)


def stored(folder: Path) -> Dict[str, Tuple[object, object]]:
    with sqlite3.connect(folder / "db.sqlite") as conn:
        rows = conn.execute("SELECT id, clip_path, clip_duration_s FROM detections")
        return {row[0]: (row[1], row[2]) for row in rows}


def check_oldest_went(rows: List[dict], folder: Path, clips: Path) -> List[dict]:
    """The clips written that are gone are older than every clip left, their rows' clip_path
    is NULL (clip_duration_s kept) and every detection row is there; return the gone ones."""
    written = [row for row in rows if row.get("clip")]
    left = {str(path) for path in clips.rglob("*.wav")}
    gone = [row for row in written if row["clip"]["path"] not in left]
    kept = [row for row in written if row["clip"]["path"] in left]
    assert gone and kept and len(left) == len(kept)
    newest_gone = max(Path(row["clip"]["path"]).name for row in gone)
    assert newest_gone < min(Path(row["clip"]["path"]).name for row in kept)
    table = stored(folder)
    assert set(table) == {row["id"] for row in rows}  # every detection row is there
    for row in gone:
        assert table[row["id"]] == (None, row["clip"]["duration_s"])
    for row in kept:
        assert table[row["id"]] == (row["clip"]["path"], row["clip"]["duration_s"])
    return gone


def counts(stderr: str) -> Tuple[int, int]:
    summary = re.search(r"clips: (\d+) written.*, (\d+) dropped \(disk\)", stderr)
    assert summary, stderr
    return int(summary.group(1)), int(summary.group(2))


def test_a_disk_at_its_free_floor_stops_clips_not_detections(
    birdnet_model, long_recording, small_disk, tmp_path
):
    """Floor 2 MB on the 8 MB tmpfs: clips stop at the floor (one line), all 68 detections
    are stored; after the run the oldest clips go until 6 MB (floor + 4 MB) are free."""
    settings = {
        "clips": {"format": "wav", "keep_per_species_day": 1000},
        "storage": {"min_free_mb": 2},
    }
    stderr, rows = simulate(long_recording, tmp_path, small_disk, settings)
    written, dropped = counts(stderr)
    assert len(rows) >= 40 and written > 0 and dropped > 0
    assert written + dropped == len(rows) == len(stored(tmp_path))
    assert stderr.count("clips stopped:") == 1 and "under storage.min_free_mb (2 MB)" in stderr
    assert "clips resumed" not in stderr  # nothing frees space during the run
    gone = check_oldest_went(rows, tmp_path, small_disk)
    assert shutil.disk_usage(small_disk).free >= 6e6
    assert f"housekeeping: deleted {len(gone)} clip(s)" in stderr


def test_enospc_drops_clips_with_one_warning_and_the_budget_keeps_the_newest(
    birdnet_model, long_recording, small_disk, tmp_path
):
    """No floor: the tmpfs really fills (ENOSPC); the clips that do not fit are dropped and
    counted with one warning, detections go on; clips.max_total_mb 3 then keeps the newest
    clips within 3 MB."""
    settings = {
        "clips": {"format": "wav", "max_total_mb": 3, "keep_per_species_day": 1000},
        "storage": {"min_free_mb": 0},
    }
    stderr, rows = simulate(long_recording, tmp_path, small_disk, settings)
    written, dropped = counts(stderr)
    assert written > 0 and dropped > 0 and written + dropped == len(rows)
    assert stderr.count("clips stopped:") == 1 and "no space left" in stderr
    assert "0 dropped (backlog), 0 failed" in stderr
    check_oldest_went(rows, tmp_path, small_disk)
    assert sum(path.stat().st_size for path in small_disk.rglob("*.wav")) <= 3e6
