"""A damaged database at a real ``birdd --simulate`` start (the model, a real broker): moved
aside and kept, a new one holds the run, one warning says so, and the stats carry it."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import time

import jsonschema
import pytest
from birdd_testing import REPO, THRUSH, birdd_command, recording, run_birdd
from broker import Subscriber
from test_db_health import (
    PAGE,
    crashed_copy,
    overwrite_middle,
    snapshot,
    stored_ids,
    write_database,
)

from birdd.daemon.store.sqlite_health import damaged_copies, integrity_findings

pytestmark = pytest.mark.system
STATS_SCHEMA = json.loads((REPO / "docs" / "schema" / "stats.v1.json").read_text())


def test_a_damaged_database_is_moved_aside_at_start_and_published(birdnet_model, broker, tmp_path):
    db = crashed_copy(tmp_path)
    overwrite_middle(db)
    assert integrity_findings(db, "quick_check")
    before = snapshot(tmp_path)
    with Subscriber(broker, "birdd/garden/#") as station:
        result = run_birdd(
            *("--simulate", str(recording(THRUSH)), "--station", "garden"),
            *("--db", str(db), "--output", "/dev/null", "--mqtt", broker.url),
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        station.wait_for(lambda ms: ms[-1].topic == "birdd/garden/status", timeout=10)
        messages = station.messages
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("birdd.sqlite.corrupt-")]
    copy = min(kept, key=lambda p: len(p.name))
    assert sorted(p.name for p in kept) == [copy.name, f"{copy.name}-shm", f"{copy.name}-wal"]
    assert copy.read_bytes() == before["birdd.sqlite"]
    assert (tmp_path / f"{copy.name}-wal").read_bytes() == before["birdd.sqlite-wal"]
    warnings = [line for line in result.stderr.splitlines() if "damaged database" in line]
    assert len(warnings) == 1 and str(db) in warnings[0] and str(copy) in warnings[0]
    with contextlib.closing(sqlite3.connect(str(db))) as conn:
        runs = conn.execute("SELECT status, detections FROM runs").fetchall()
    assert len(runs) == 1 and runs[0][0] == "complete" and runs[0][1] > 0
    assert integrity_findings(db) == []
    reports = [json.loads(m.payload) for m in messages if m.topic == "birdd/garden/stats"]
    assert reports
    for report in reports:
        jsonschema.validate(report, STATS_SCHEMA)
        assert report["db_recovered_from"] == str(copy)


def test_backup_while_birdd_simulates_in_real_time(birdnet_model, tmp_path):
    """``birdd --simulate --realtime 3`` (10 s of writing): a backup taken once rows are
    committed holds them all and passes integrity_check, and the run goes on to complete."""
    db, copy = tmp_path / "birdd.sqlite", tmp_path / "copy.sqlite"
    args = ("--simulate", str(recording(THRUSH)), "--realtime", "3", "--per-window")
    with subprocess.Popen(
        birdd_command(*args, "--min-conf", "0.1", "--db", str(db), "--output", "/dev/null"),
        stderr=subprocess.PIPE,
        text=True,
    ) as simulate:
        before = _wait_for_rows(db, simulate)
        result = run_birdd("db", "backup", str(copy), "--db", str(db))
        running = simulate.poll() is None
        assert simulate.wait(timeout=60) == 0, simulate.stderr.read()
    assert result.returncode == 0, result.stderr
    assert running, "the backup must be taken while birdd writes"
    assert integrity_findings(copy) == []
    assert before <= stored_ids(copy) < stored_ids(db)
    with contextlib.closing(sqlite3.connect(str(db))) as conn:
        assert conn.execute("SELECT status FROM runs").fetchall() == [("complete",)]


def _wait_for_rows(db, process) -> set:
    """The detection ids committed once the first rows are there (within 30 s)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        if db.is_file():
            with contextlib.suppress(sqlite3.OperationalError):
                ids = stored_ids(db)
                if ids:
                    return ids
        time.sleep(0.1)
    raise AssertionError(f"no detection committed: {process.stderr.read()}")


def test_birdd_analyze_moves_a_damaged_database_aside_too(birdnet_model, tmp_path):
    db = tmp_path / "birdd.sqlite"
    write_database(db)
    db.write_bytes(b"\x00" * (4 * PAGE))  # the whole file zeroed: no header left
    result = run_birdd(
        "analyze",
        str(recording(THRUSH)),
        "--db",
        str(db),
        "--workers",
        "1",
        "--output",
        str(tmp_path / "tables"),
    )
    assert result.returncode == 0, result.stderr
    copy = damaged_copies(db)
    assert len(copy) == 1 and copy[0].read_bytes() == b"\x00" * (4 * PAGE)
    warnings = [line for line in result.stderr.splitlines() if "damaged database" in line]
    assert len(warnings) == 1 and "file is not a database" in warnings[0]
    with contextlib.closing(sqlite3.connect(str(db))) as conn:
        assert conn.execute("SELECT mode, status FROM runs").fetchall() == [("analyze", "complete")]
