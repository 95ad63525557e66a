"""Damaged databases and copies, on real SQLite files and real processes (no model): the check a
writer makes at start, ``birdd db check`` and ``birdd db backup`` while another process writes."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator

import pytest
from birdd_testing import REPO, run_birdd
from db_writer import ROWS, detection

from birdd.daemon.records import RunInfo
from birdd.daemon.sinks.sqlite import SQLiteSink
from birdd.daemon.store.sqlite_health import (
    _damage_error,
    damaged_copies,
    integrity_findings,
    recover_damaged,
)
from birdd.daemon.store.sqlite_store import DatabasePathError, SQLiteStore

PAGE = 4096
BATCHES = 40
RUN = RunInfo(
    run_id="run-1",
    station="garden",
    mode="simulate",
    source="dawn.wav",
    started_at=detection(1, 1).start,
    clock_origin="filename",
    model={"name": "writer", "version": "1", "sha256": "0" * 64},
    config_json="{}",
)


def write_database(path: Path, batches: int = BATCHES) -> None:
    """What birdd's sink writes for ``batches`` × 50 detections, closed cleanly."""
    sink = SQLiteSink(path)
    sink.open(RUN)
    for batch in range(1, batches + 1):
        sink.write([detection(batch, row) for row in range(1, ROWS + 1)])
    sink.close("complete")


def crashed_copy(folder: Path) -> Path:
    """A database and its -wal as a power cut leaves them: copied while the sink is open,
    with a run still 'running' and its last batch only in the WAL."""
    source = folder / "source" / "birdd.sqlite"
    source.parent.mkdir()
    write_database(source)
    sink = SQLiteSink(source)
    sink.open(RunInfo(**{**RUN.__dict__, "run_id": "run-2"}))
    sink.write([detection(BATCHES + 1, row) for row in range(1, ROWS + 1)])
    db = folder / "birdd.sqlite"
    for suffix in ("", "-wal", ".lock"):
        shutil.copyfile(f"{source}{suffix}", f"{db}{suffix}")
    sink.close("complete")
    return db


def overwrite_middle(db: Path, pages: int = 8, fill: bytes = b"\xa5") -> None:
    """Overwrite ``pages`` pages in the middle of the file, as a failing SD card does."""
    middle = db.stat().st_size // PAGE // 2
    with db.open("r+b") as file:
        file.seek(middle * PAGE)
        file.write(fill * (pages * PAGE))


def snapshot(folder: Path) -> Dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}


def test_pages_overwritten_in_the_middle_move_aside_byte_identical(tmp_path, caplog):
    db = crashed_copy(tmp_path)
    overwrite_middle(db)
    assert integrity_findings(db, "quick_check"), "the damage must be visible to SQLite"
    before = snapshot(tmp_path)
    with caplog.at_level(logging.WARNING, logger="birdd"):
        recovery = recover_damaged(db)
    assert recovery is not None and recovery.database == db
    kept = recovery.kept_as
    assert kept.name.startswith("birdd.sqlite.corrupt-") and kept.name.endswith("Z")
    assert kept.read_bytes() == before["birdd.sqlite"]
    assert Path(f"{kept}-wal").read_bytes() == before["birdd.sqlite-wal"]
    assert not db.exists() and not Path(f"{db}-wal").exists()
    assert damaged_copies(db) == [kept]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert str(db) in warnings[0].getMessage() and str(kept) in warnings[0].getMessage()
    write_database(db, batches=2)  # the new database works
    with SQLiteStore(db) as store:
        assert len(store.detections()) == 2 * ROWS
    assert integrity_findings(db) == []


def test_a_database_birdd_wrote_that_became_garbage_moves_aside(tmp_path):
    """A file wholly overwritten (its header gone too): its lock file says birdd wrote it."""
    db = tmp_path / "birdd.sqlite"
    write_database(db, batches=2)
    garbage = os.urandom(16 * PAGE)
    db.write_bytes(garbage)
    assert integrity_findings(db, "quick_check") == ["file is not a database"]
    recovery = recover_damaged(db)
    assert recovery is not None and recovery.problem == "file is not a database"
    assert recovery.kept_as.read_bytes() == garbage
    with SQLiteStore(db) as store:
        assert store.runs() == []


def test_a_file_that_never_was_a_database_is_refused_unchanged(tmp_path):
    """No SQLite header and no lock file: a wrong --db path, not damage (exit 2 in the CLI)."""
    notes = tmp_path / "notes.txt"
    notes.write_text("field notes, not a database\n" * 20)
    before = snapshot(tmp_path)
    with pytest.raises(DatabasePathError, match=r"is not an SQLite database \(left unchanged\)"):
        recover_damaged(notes)
    assert snapshot(tmp_path) == before


def test_a_sound_database_stays_where_it_is(tmp_path):
    db = tmp_path / "birdd.sqlite"
    write_database(db, batches=2)
    content = db.read_bytes()
    assert recover_damaged(db) is None
    assert db.read_bytes() == content and damaged_copies(db) == []
    assert recover_damaged(tmp_path / "new.sqlite") is None  # nothing there yet


def test_a_damaged_database_another_writer_holds_is_left_alone(tmp_path):
    db = tmp_path / "birdd.sqlite"
    write_database(db, batches=4)
    overwrite_middle(db, pages=2)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, f"{db}.lock"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        assert recover_damaged(db) is None
        assert db.exists() and damaged_copies(db) == []
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize(
    "message, damage",
    [
        ("database disk image is malformed", True),
        ("file is not a database", True),
        ("database is locked", False),
        ("unable to open database file", False),
    ],
)
def test_damage_is_told_by_its_text_where_python_gives_no_error_code(message, damage):
    """Python before 3.11 (Raspberry Pi OS bullseye, JetPack 5) has no ``sqlite_errorcode``."""
    error = sqlite3.DatabaseError(message)
    assert getattr(error, "sqlite_errorcode", None) is None
    assert _damage_error(error) is damage


HOLD_LOCK = """
import fcntl, sys, time
lock = open(sys.argv[1], "a")
fcntl.flock(lock, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


# --- birdd db check ----------------------------------------------------------------------------


def test_db_check_says_ok_for_a_sound_database(tmp_path):
    db = tmp_path / "birdd.sqlite"
    write_database(db, batches=2)
    result = run_birdd("db", "check", "--db", str(db))
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{db}: ok\n", "")


def test_db_check_reads_the_database_of_the_config(tmp_path):
    db = tmp_path / "station.sqlite"
    write_database(db, batches=1)
    config = tmp_path / "config.yaml"
    config.write_text(f"storage: {{db: {db}}}\n")
    result = run_birdd("db", "check", "--config", str(config))
    assert result.returncode == 0 and result.stdout == f"{db}: ok\n", result.stderr


def test_db_check_lists_each_problem_of_a_damaged_database(tmp_path):
    db = tmp_path / "birdd.sqlite"
    write_database(db)
    overwrite_middle(db, fill=b"\x00")
    content = db.read_bytes()
    result = run_birdd("db", "check", "--db", str(db))
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines and all(line.startswith(f"{db}: ") and line != f"{db}: ok" for line in lines)
    assert len(result.stderr.splitlines()) == 1 and "is damaged" in result.stderr
    assert db.read_bytes() == content  # read-only


def test_db_check_calls_a_file_that_is_not_a_database_damaged(tmp_path):
    db = tmp_path / "birdd.sqlite"
    db.write_bytes(b"\x00" * 8192)
    result = run_birdd("db", "check", "--db", str(db))
    assert result.returncode == 1
    assert result.stdout == f"{db}: file is not a database\n"


@pytest.mark.parametrize(
    "args, error",
    [
        (["check", "--db", "{tmp}/missing.sqlite"], "{tmp}/missing.sqlite: no such database"),
        (["check", "--db", "{tmp}"], "{tmp} is a directory"),
        (["backup", "{tmp}/copy.sqlite", "--db", "{tmp}/none"], "{tmp}/none: no such database"),
    ],
)
def test_db_commands_refuse_bad_input_in_one_line(tmp_path, args, error):
    result = run_birdd("db", *[arg.format(tmp=tmp_path) for arg in args])
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"birdd: error: {error.format(tmp=tmp_path)}")


def test_db_commands_refuse_an_unknown_flag(tmp_path):
    result = run_birdd("db", "check", "--bogus")
    assert result.returncode == 2 and "unrecognized arguments: --bogus" in result.stderr


# --- birdd db backup ---------------------------------------------------------------------------


@contextlib.contextmanager
def writer_process(db: Path) -> Iterator[subprocess.Popen]:
    """tests/db_writer.py committing batches to ``db`` until its stdin closes."""
    process = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "db_writer.py"), str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def committed(process: subprocess.Popen, at_least: int) -> int:
    """Read the writer's lines until it has committed ``at_least`` batches; the last one."""
    while True:
        line = process.stdout.readline()
        assert line, process.stderr.read()
        batch = int(line.split()[0])
        if batch >= at_least:
            return batch


def stored_ids(db: Path) -> set:
    with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as c:
        return {row[0] for row in c.execute("SELECT id FROM detections")}


def test_backup_while_another_process_writes(tmp_path):
    db, copy = tmp_path / "birdd.sqlite", tmp_path / "backup" / "copy.sqlite"
    copy.parent.mkdir()
    with writer_process(db) as writer:
        before = committed(writer, at_least=20)
        result = run_birdd("db", "backup", str(copy), "--db", str(db))
        after = committed(writer, at_least=before + 5)  # still writing after the copy
        writer.stdin.close()
        assert writer.wait(timeout=30) == 0, writer.stderr.read()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{copy}: ") and "integrity ok" in result.stdout
    assert integrity_findings(copy) == []
    ids = stored_ids(copy)
    wanted = {detection(b, r).id for b in range(1, before + 1) for r in range(1, ROWS + 1)}
    assert wanted <= ids  # every row committed before the backup started
    assert len(ids) % ROWS == 0  # whole batches only: one consistent snapshot
    assert len(stored_ids(db)) >= after * ROWS > len(wanted)
    assert f"{len(ids)} detection(s)" in result.stdout
    assert sorted(p.name for p in copy.parent.iterdir()) == ["copy.sqlite"]  # one file
    with contextlib.closing(sqlite3.connect(str(copy))) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_backup_refuses_to_replace_a_file_unless_forced(tmp_path):
    db, copy = tmp_path / "birdd.sqlite", tmp_path / "copy.sqlite"
    write_database(db, batches=2)
    copy.write_text("last week's backup")
    result = run_birdd("db", "backup", str(copy), "--db", str(db))
    assert result.returncode == 2
    assert result.stderr == f"birdd: error: {copy} exists; give --force to replace it\n"
    assert copy.read_text() == "last week's backup"
    forced = run_birdd("db", "backup", str(copy), "--db", str(db), "--force")
    assert forced.returncode == 0, forced.stderr
    assert stored_ids(copy) == stored_ids(db) and len(stored_ids(db)) == 2 * ROWS


def test_backup_of_a_damaged_database_fails_and_leaves_nothing(tmp_path):
    db, copy = tmp_path / "birdd.sqlite", tmp_path / "copy.sqlite"
    write_database(db)
    overwrite_middle(db, fill=b"\x00")
    result = run_birdd("db", "backup", str(copy), "--db", str(db))
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and "fails integrity_check" in result.stderr
    assert "birdd db check" in result.stderr
    assert not [path.name for path in tmp_path.iterdir() if "copy" in path.name]


def test_backup_refuses_a_missing_folder(tmp_path):
    db = tmp_path / "birdd.sqlite"
    write_database(db, batches=1)
    target = tmp_path / "usb" / "copy.sqlite"
    result = run_birdd("db", "backup", str(target), "--db", str(db))
    assert result.returncode == 2
    assert (
        result.stderr
        == f"birdd: error: {target.parent}: no such folder (is the backup disk mounted?)\n"
    )
    assert not target.parent.exists()
