"""The clips' disk budget without the model: which clips the rule deletes, the clip names it
reads, the rows it marks, the WAL checkpoint and vacuums on real SQLite files, the clip
writer's free-floor guard, and the config's errors."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

from birdd.daemon.clips.budget import (
    Budget,
    ClipFile,
    bytes_to_free,
    delete_files,
    parse_clip,
    scan,
    select,
)
from birdd.daemon.clips.writer import ClipCounts, DiskGuard
from birdd.daemon.config import ConfigError, load_config
from birdd.daemon.store import sqlite_maintenance as db
from birdd.daemon.store.config import HousekeepingConfig
from birdd.daemon.store.housekeeping import Housekeeping
from birdd.daemon.store.sqlite_store import SQLiteStore

REPO = Path(__file__).resolve().parent.parent
DAY = 86400.0
NOW = datetime(2024, 5, 10, tzinfo=timezone.utc).timestamp()


def clip(name: str, days_ago: float, species: str = "amerob", conf: Optional[float] = 0.9):
    return ClipFile(Path(f"/c/{name}.flac"), 100, NOW - days_ago * DAY, species, name, conf)


def names(clips: List[ClipFile]) -> List[str]:
    return [c.detection_id for c in clips]


def test_within_budget_nothing_goes():
    clips = [clip("a", 3), clip("b", 2)]
    assert select(clips, Budget(1000, 30 * DAY, 10), NOW, bytes_needed=0) == []
    assert select(clips, Budget(None, None, 10), NOW, bytes_needed=0) == []


def test_expired_clips_go_whatever_the_space():
    clips = [clip("old", 31), clip("new", 1)]
    assert names(select(clips, Budget(None, 30 * DAY, 10), NOW, 0)) == ["old"]


def test_over_the_size_budget_the_oldest_go_first():
    clips = [clip("c", 1), clip("a", 3), clip("b", 2)]
    assert names(select(clips, Budget(150, None, 10), NOW, 0)) == ["a", "b"]


def test_the_surplus_of_a_species_day_goes_before_older_clips():
    """Three robins of one day (keep 2: the weakest is surplus) and an older warbler: the
    weak robin goes first although the warbler is older; then oldest first."""
    day = NOW - 2 * DAY
    robins = [
        ClipFile(Path(f"/c/r{i}.flac"), 100, day + i, "amerob", f"r{i}", conf)
        for i, conf in enumerate([0.95, 0.5, 0.8])
    ]
    warbler = clip("w", 5, "yelwar")
    clips = [*robins, warbler]
    assert names(select(clips, Budget(300, None, 2), NOW, 0)) == ["r1"]
    assert names(select(clips, Budget(200, None, 2), NOW, 0)) == ["r1", "w"]
    assert names(select(clips, Budget(100, None, 2), NOW, 0)) == ["r1", "w", "r0"]


def test_a_clip_without_a_row_is_the_weakest_of_its_day():
    clips = [clip("kept", 1, conf=0.6), clip("orphan", 1, conf=None)]
    assert names(select(clips, Budget(100, None, 1), NOW, 0)) == ["orphan"]


def test_the_free_floor_frees_what_it_needs_counting_expired_clips():
    clips = [clip("x", 40), clip("a", 3), clip("b", 2), clip("c", 1)]
    budget = Budget(None, 30 * DAY, 10)
    assert names(select(clips, budget, NOW, bytes_needed=250)) == ["x", "a", "b"]
    assert names(select(clips, budget, NOW, bytes_needed=50)) == ["x"]


def test_under_the_floor_a_pass_frees_a_tenth_more_or_at_least_the_resume_headroom():
    mb = 1_000_000
    assert bytes_to_free(free=101 * mb, min_free_bytes=100 * mb) == 0
    assert bytes_to_free(free=95 * mb, min_free_bytes=100 * mb) == 15 * mb  # to 110 MB
    assert bytes_to_free(free=9 * mb, min_free_bytes=10 * mb) == 5 * mb  # to 10 + 4 MB
    assert bytes_to_free(free=0, min_free_bytes=0) == 0  # no floor


def test_clip_names_are_read_and_strangers_left_alone(tmp_path):
    day = tmp_path / "2024-05-02"
    day.mkdir()
    good = day / "20240502T040004.500Z_ovenbi1_e53ca595.flac"
    for path in (good, day / "notes.txt", day / (good.name + ".part"), day / "x_y_z.flac"):
        path.write_bytes(b"12345")
    (tmp_path / "stray.flac").write_bytes(b"1")
    found = scan(tmp_path)
    assert [(c.path, c.species, c.detection_id, c.size) for c in found] == [
        (good, "ovenbi1", "e53ca595", 5)
    ]
    assert found[0].start == datetime(2024, 5, 2, 4, 0, 4, 500000, timezone.utc).timestamp()
    assert parse_clip(Path("a_b.wav"), 1) is None
    assert delete_files(found) == found and not good.exists() and day.exists()


def database_with_clips(path: Path, clips: List[Tuple[str, float, str]]) -> Path:
    """A migrated database with one detection row (id, confidence, clip_path) per clip; the
    other NOT NULL columns hold zeros."""
    SQLiteStore(path).close()
    with sqlite3.connect(path) as conn:
        info = conn.execute("PRAGMA table_info(detections)").fetchall()
        notnull = {row[1] for row in info if row[3] and row[1] != "rowid"}
        for ident, conf, clip_path in clips:
            values = {c: 0 for c in notnull} | {"id": ident, "confidence": conf}
            values |= {"clip_path": clip_path, "clip_duration_s": 5.0}
            keys = list(values)
            conn.execute(
                f"INSERT INTO detections ({','.join(keys)}) VALUES ({','.join('?' * len(keys))})",
                [values[k] for k in keys],
            )
    return path


def test_forget_clips_nulls_the_path_and_keeps_the_row(tmp_path):
    clips = [("a", 0.9, "/c/a.flac"), ("b", 0.4, "/c/b.flac")]
    path = database_with_clips(tmp_path / "d.sqlite", clips)
    conn = db.connect(path)
    assert db.clip_confidences(conn, ["a", "b", "gone"]) == {"a": 0.9, "b": 0.4}
    assert db.forget_clips(conn, ["a", "gone"]) == 1
    rows = conn.execute("SELECT id, clip_path, clip_duration_s FROM detections ORDER BY id")
    assert rows.fetchall() == [("a", None, 5.0), ("b", "/c/b.flac", 5.0)]
    conn.close()


def fill_and_empty(path: Path) -> sqlite3.Connection:
    conn = db.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS junk (blob BLOB)")
    conn.executemany("INSERT INTO junk VALUES (?)", [(b"x" * 4000,) for _ in range(500)])
    conn.execute("DELETE FROM junk")
    return conn


def test_a_new_database_gives_free_pages_back_step_by_step(tmp_path):
    path = tmp_path / "new.sqlite"
    SQLiteStore(path).close()
    conn = fill_and_empty(path)
    assert db.free_fraction(conn) > 0.5
    assert db.vacuum(conn, 0.2, allow_full_vacuum=False).startswith("incremental")
    assert db.free_fraction(conn) == 0.0
    assert db.checkpoint(conn) and Path(f"{path}-wal").stat().st_size == 0
    conn.close()


def test_an_old_database_is_vacuumed_whole_only_after_the_run(tmp_path):
    path = tmp_path / "old.sqlite"
    conn = fill_and_empty(path)  # made without auto_vacuum, as before this birdd
    assert db.vacuum(conn, 0.2, allow_full_vacuum=False) is None
    assert db.vacuum(conn, 1.0, allow_full_vacuum=True) is None  # not free enough
    assert db.vacuum(conn, 0.2, allow_full_vacuum=True).startswith("full VACUUM")
    assert db.free_fraction(conn) == 0.0
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == db.INCREMENTAL
    conn.close()


def test_the_disk_guard_stops_and_resumes_clips_with_one_line_each(tmp_path, caplog):
    guard = DiskGuard(tmp_path, min_free_bytes=1 << 62)
    with caplog.at_level(logging.WARNING, logger="birdd"):
        assert not guard.room(1000) and not guard.room(1000)
        guard.min_free_bytes = 0
        assert not guard.room(1 << 62)  # stopped clips wait until the clip fits
        assert guard.room(1000) and guard.room(1000)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "clips stopped" in lines[0] and "storage.min_free_mb" in lines[0]
    assert "clips resumed" in lines[1]
    full = OSError(28, "No space left on device")
    assert guard.full(full, needed=1) and not guard.full(RuntimeError("bad"), needed=1)
    assert guard.full(RuntimeError("System error."), needed=1 << 62)


def test_clips_dropped_disk_is_a_stats_field():
    counts = ClipCounts()
    counts.add("dropped_disk")
    stats = counts.to_stats()
    assert stats["clips_dropped_disk"] == 1
    schema = json.loads((REPO / "docs" / "schema" / "stats.v1.json").read_text())
    assert set(stats) <= set(schema["properties"])


def test_the_housekeeping_thread_deletes_expired_clips_and_marks_their_rows(tmp_path):
    """Started as a live run starts it: its first pass deletes the clip past max_age_days,
    keeps the recent one, and NULLs the old row's clip_path; stop() ends the thread."""
    folder = tmp_path / "clips"
    now = datetime.now(timezone.utc)
    files = {}
    for ident, age in (("old", timedelta(days=40)), ("new", timedelta(hours=1))):
        began = now - age
        path = folder / f"{began:%Y-%m-%d}" / f"{began:%Y%m%dT%H%M%S}.000Z_amerob_{ident}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 1000)
        files[ident] = path
    database = database_with_clips(
        tmp_path / "d.sqlite", [(ident, 0.9, str(path)) for ident, path in files.items()]
    )
    keeper = Housekeeping(database, folder, Budget(None, 30 * DAY, 10), 0, HousekeepingConfig())
    keeper.start()
    deadline = time.monotonic() + 10
    while files["old"].exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    keeper.stop()
    assert not files["old"].exists() and files["new"].exists()
    with sqlite3.connect(database) as conn:
        rows = dict(conn.execute("SELECT id, clip_path FROM detections"))
    assert rows == {"old": None, "new": str(files["new"])}


@pytest.mark.parametrize(
    "text, line",
    [
        ("clips: {max_total_mb: 0}", "clips.max_total_mb | 0 | Input should be greater than 0"),
        ("clips: {keep_per_species_day: 0}", "clips.keep_per_species_day | 0 | Input should"),
        ("storage: {min_free_mb: -1}", "storage.min_free_mb | -1 | Input should be greater"),
        (
            "storage: {housekeeping: {clips_every_s: 1}}",
            "storage.housekeeping.clips_every_s | 1 | Input should be greater than or equal to 5",
        ),
    ],
)
def test_budget_settings_are_checked(tmp_path, text, line):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert len(error.value.lines) == 1 and error.value.lines[0].startswith(line)
