"""A writer process for the backup tests: birdd's SQLite sink committing batches of detections
until stdin closes, printing ``BATCH ROWS`` (both counted from 1) after each commit.

Run as ``python tests/db_writer.py DB``; each detection's id is ``<batch:06d><row:04d>``.
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import datetime, timedelta, timezone

from birdd.daemon.records import Detection, RunInfo
from birdd.daemon.sinks.sqlite import SQLiteSink
from birdd.engines.models.labels import Species

ROWS = 50
PAUSE_S = 0.01
START = datetime(2024, 5, 2, 4, 0, 0, tzinfo=timezone.utc)
ROBIN = Species("Turdus migratorius", "American Robin", "amerob", True)
MODEL = {"name": "writer", "version": "1", "sha256": "0" * 64}


def detection(batch: int, row: int) -> Detection:
    offset = (batch * ROWS + row) * 3.0
    return Detection(
        id=f"{batch:06d}{row:04d}",
        species=ROBIN,
        species_index=4711,
        confidence=0.8,
        offset_start=offset,
        offset_end=offset + 3.0,
        start=START + timedelta(seconds=offset),
        end=START + timedelta(seconds=offset + 3.0),
        source="writer.wav",
        channel="mix",
        station="garden",
        model=dict(MODEL),
        windows=1,
    )


def main(db: str) -> None:
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    sink = SQLiteSink(db)
    run = RunInfo(
        run_id="writer",
        station="garden",
        mode="simulate",
        source="writer.wav",
        started_at=datetime.now(timezone.utc),
        clock_origin="filename",
        model=dict(MODEL),
        config_json="{}",
    )
    sink.open(run)
    batch = 0
    while not stop.is_set():
        batch += 1
        sink.write([detection(batch, row) for row in range(1, ROWS + 1)])
        print(batch, ROWS, flush=True)
        time.sleep(PAUSE_S)
    sink.close("complete")


if __name__ == "__main__":
    main(sys.argv[1])
