"""What the database checks cost on a big station database: the ``PRAGMA quick_check`` every
writer (run, --simulate, analyze) makes at start, ``birdd db check`` (full integrity_check) and
``birdd db backup`` (online backup API, checked copy).

Builds a database of ``--rows`` detections with birdd's own store (batches of 1,000 in one
transaction each, as the sink commits them), then times each step ``--runs`` times with the
file in the page cache (the second and later runs of a daemon that restarts; a cold SD card
reads slower). Prints a markdown table and rewrites the sqlite section of docs/benchmarks.md.

    python bench/sqlite_health.py [--rows 1000000] [--runs 3] [--no-docs]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from statistics import median
from typing import Callable, List

from common import ROOT, host_lines, replace_section, section_text, step

sys.path.insert(0, str(ROOT / "tests"))
from db_writer import MODEL, detection

from birdd.daemon.records import RunInfo
from birdd.daemon.store.sqlite_health import integrity_findings, recover_damaged
from birdd.daemon.store.sqlite_store import SQLiteStore

START = "<!-- sqlite:start (written by bench/sqlite_health.py) -->"
END = "<!-- sqlite:end -->"
BATCH = 1000


def build(db: Path, rows: int) -> None:
    run = RunInfo(
        run_id="bench",
        station="garden",
        mode="simulate",
        source="bench.wav",
        started_at=datetime.now(timezone.utc),
        clock_origin="filename",
        model=dict(MODEL),
        config_json="{}",
    )
    with SQLiteStore(db) as store:
        store.begin_run(run)
        for batch in range(rows // BATCH):
            if batch % 100 == 0:
                step(f"{batch * BATCH:,} of {rows:,} rows")
            store.add_detections("bench", [detection(batch, row) for row in range(BATCH)])
        store.end_run("bench", "complete")


def timed(action: Callable[[], object], runs: int) -> List[float]:
    seconds = []
    for _ in range(runs):
        began = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - began)
    return seconds


def backup_command(db: Path, target: Path) -> None:
    command = [sys.executable, "-m", "birdd.daemon", "db", "backup", str(target), "--db", str(db)]
    subprocess.run([*command, "--force"], check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-docs", action="store_true", help="print only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="birdd-sqlite-bench-") as folder:
        db, copy = Path(folder) / "birdd.sqlite", Path(folder) / "copy.sqlite"
        began = time.perf_counter()
        build(db, args.rows)
        step(f"built {db.stat().st_size / 1e6:,.0f} MB in {time.perf_counter() - began:.0f} s")
        rows = [
            ("quick_check at start (`recover_damaged`)", lambda: recover_damaged(db)),
            ("`birdd db check` (integrity_check)", lambda: integrity_findings(db)),
            ("`birdd db backup` (process, copy + check)", lambda: backup_command(db, copy)),
        ]
        table = ["| step | median | min | max |", "|---|---:|---:|---:|"]
        for label, action in rows:
            step(label)
            seconds = timed(action, args.runs)
            table.append(
                f"| {label} | {median(seconds):.2f} s | {min(seconds):.2f} s "
                f"| {max(seconds):.2f} s |"
            )
        size_mb = db.stat().st_size / 1e6
    load = os.getloadavg()[0]
    machine = [
        *host_lines(f", 1-minute load average {load:.2f} at the end"),
        f"- database: {args.rows:,} detections, {size_mb:,.0f} MB, in the page cache; "
        f"{args.runs} runs each; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
    ]
    reading = (
        "Every writer pays the quick_check once at start. It reads every page but skips the "
        "index cross-checks that make integrity_check slower; both read-only, so they never "
        "block the daemon. The backup is one read transaction (the daemon keeps writing, WAL) "
        "plus an integrity_check of the copy, so it costs about one check more than the copy."
    )
    title = "## SQLite: start-up check, integrity check and backup (`bench/sqlite_health.py`)"
    section = section_text(START, END, title, machine, table, reading)
    print(section)
    if not args.no_docs:
        replace_section(START, END, section, "\n")


if __name__ == "__main__":
    main()
