"""The sinks: SQLite (schema, lifecycle, recovery, errors), the text outputs, and the fan-out."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import List

import pytest

from birdd.daemon.records import Detection, RunInfo
from birdd.daemon.sinks.base import Sink, SinkError
from birdd.daemon.sinks.fanout import SinkFanout, pump
from birdd.daemon.sinks.files import OutputSink, make_output_sink
from birdd.daemon.sinks.sqlite import SQLiteSink
from birdd.daemon.store.sqlite_schema import MIGRATIONS
from birdd.daemon.store.sqlite_store import SQLiteStore, StoreError
from birdd.engines.models.labels import Species

MODEL = {
    "name": "BirdNET_GLOBAL_6K_V2.4_Model_FP32",
    "version": "2.4",
    "sha256": "55f3e4055b1a13bfa9a2452731d0d34f6a02d6b775a334362665892794165e4c",
}
START = datetime(2024, 5, 2, 4, 0, 0, tzinfo=timezone.utc)
ROBIN = Species("Turdus migratorius", "American Robin", "amerob", True)
DOG = Species("Dog", "Dog", None, False)


def detection(
    detection_id: str, species: Species, offset: float, confidence: float, channel=0
) -> Detection:
    return Detection(
        id=detection_id,
        species=species,
        species_index=4711 if species.is_bird else 1234,
        confidence=confidence,
        offset_start=offset,
        offset_end=offset + 3.0,
        start=START + timedelta(seconds=offset),
        end=START + timedelta(seconds=offset + 3.0),
        source="dawn_chorus.wav",
        channel=channel,
        station="garden",
        model=dict(MODEL),
        windows=2 if species.is_bird else 1,
    )


ROBIN_DETECTION = detection("3f2a9c0e5b7d4e1fa6c8b0d2e4f61a3c", ROBIN, 3.0, 0.81234, channel=1)
DOG_DETECTION = detection("9b1d7e3c5a2f4b6d8e0c1a3f5b7d9e2a", DOG, 9.5, 0.55, channel="mix")
TWO = [ROBIN_DETECTION, DOG_DETECTION]


def run_info(run_id: str = "run-1", mode: str = "simulate") -> RunInfo:
    return RunInfo(
        run_id=run_id,
        station="garden",
        mode=mode,
        source="dawn_chorus.wav",
        started_at=datetime(2024, 5, 2, 9, 30, 0, tzinfo=timezone.utc),
        clock_origin="filename",
        model=dict(MODEL),
        config_json='{"min_confidence": 0.5}',
    )


# --- SQLite ------------------------------------------------------------------------------------


def test_new_database_has_schema_version_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "birdd.db"
    with SQLiteStore(path) as store:
        assert store.schema_version == len(MIGRATIONS) == 5
        synchronous = store._conn.execute("PRAGMA synchronous").fetchone()[0]
    assert synchronous == 1  # NORMAL
    raw = sqlite3.connect(str(path))
    names = {row[0] for row in raw.execute("SELECT name FROM sqlite_master")}
    assert {"runs", "detections", "detections_start", "detections_species_start"} <= names
    assert {"detections_run", "detections_unpublished", "gaps", "gaps_start"} <= names
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 5
    columns = {row[1] for row in raw.execute("PRAGMA table_info(detections)")}
    assert {"rowid", "id", "published_at", "record_json", "start_epoch"} <= columns
    raw.close()


def test_reopening_applies_no_migration_twice(tmp_path: Path) -> None:
    path = tmp_path / "birdd.db"
    with SQLiteStore(path) as store:
        store.begin_run(run_info())
        store.add_detections("run-1", TWO)
    for _ in range(2):
        with SQLiteStore(path) as store:
            assert store.schema_version == 5
            assert [run["run_id"] for run in store.runs()] == ["run-1"]
            assert len(store.detections()) == 2


def test_version_1_database_is_upgraded_with_its_rows(tmp_path: Path) -> None:
    """A database written by the first release gains the gaps table and keeps every row."""
    path = tmp_path / "birdd.db"
    raw = sqlite3.connect(str(path))
    MIGRATIONS[0](raw)
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()
    with SQLiteStore(path) as store:
        store.begin_run(run_info())
        store.add_detections("run-1", TWO)
    with SQLiteStore(path) as store:
        assert store.schema_version == 5
        assert len(store.detections()) == 2 and store.gaps() == []


def test_parent_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "birdd" / "birdd.db"
    SQLiteStore(path).close()
    assert path.is_file()


@pytest.mark.parametrize("status", ["complete", "interrupted", "failed"])
def test_run_lifecycle(tmp_path: Path, status: str) -> None:
    path = tmp_path / "birdd.db"
    sink = SQLiteSink(path)
    sink.open(run_info())
    sink.write(TWO[:1])
    sink.write(TWO[1:])
    with SQLiteStore(path) as reader:  # committed as they arrive, but the run is not final
        assert len(reader.detections()) == 2
        assert reader.runs()[0]["status"] == "running"
        assert reader.runs()[0]["ended_at"] is None
    sink.close(status)
    with SQLiteStore(path) as reader:
        (run,) = reader.runs()
    assert run["status"] == status
    assert run["detections"] == 2
    assert run["ended_at"].endswith("Z")
    assert run["started_at"] == "2024-05-02T09:30:00.000Z"
    assert (run["mode"], run["clock_origin"], run["model_sha256"]) == (
        "simulate",
        "filename",
        MODEL["sha256"],
    )


def test_run_left_running_by_a_crash_is_marked_interrupted(tmp_path: Path, caplog) -> None:
    path = tmp_path / "birdd.db"
    with SQLiteStore(path) as crashed:  # begins a run and dies before end_run
        crashed.begin_run(run_info("run-crashed"))
        crashed.add_detections("run-crashed", TWO)
    sink = SQLiteSink(path)
    with caplog.at_level(logging.WARNING):
        sink.open(run_info("run-next"))
    assert "run-crashed" in caplog.text
    sink.close("complete")
    with SQLiteStore(path) as reader:
        runs = {run["run_id"]: run for run in reader.runs()}
    assert runs["run-crashed"]["status"] == "interrupted"
    assert runs["run-crashed"]["detections"] == 2
    assert runs["run-next"]["status"] == "complete"


def test_a_second_writer_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    path = tmp_path / "birdd.db"
    first = SQLiteSink(path)
    first.open(run_info("run-live", mode="live"))
    with pytest.raises(StoreError, match="another birdd process"):
        SQLiteSink(path).open(run_info("run-2"))
    first.close("complete")
    with SQLiteStore(path) as reader:
        assert [run["status"] for run in reader.runs()] == ["complete"]


def test_detection_id_is_unique_and_a_bad_batch_is_rolled_back(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "birdd.db") as store:
        store.begin_run(run_info())
        store.add_detections("run-1", [ROBIN_DETECTION])
        fresh = detection("c0ffee00c0ffee00c0ffee00c0ffee00", ROBIN, 30.0, 0.7)
        with pytest.raises(StoreError, match="UNIQUE"):
            store.add_detections("run-1", [fresh, ROBIN_DETECTION])
        assert [record["id"] for record in store.detections()] == [ROBIN_DETECTION.id]


def test_records_round_trip_and_columns(tmp_path: Path) -> None:
    path = tmp_path / "birdd.db"
    robin_again = dataclasses.replace(ROBIN_DETECTION, id="5e0d3b8f1c2a4d6e9f7a8b0c1d2e3f4a")
    with SQLiteStore(path) as store:
        store.begin_run(run_info("run-1"))
        store.begin_run(run_info("run-2"))
        store.add_detections("run-1", [DOG_DETECTION])
        store.add_detections("run-2", [ROBIN_DETECTION])
        store.add_detections("run-1", [robin_again])
        everything, first_run = store.detections(), store.detections("run-1")
    records = [d.to_record() for d in (DOG_DETECTION, ROBIN_DETECTION, robin_again)]
    assert everything == records
    assert first_run == [records[0], records[2]]
    raw = sqlite3.connect(str(path))
    row = raw.execute(
        "SELECT channel, start_utc, start_epoch, is_bird, code, published_at FROM detections"
        " WHERE id = ?",
        (DOG_DETECTION.id,),
    ).fetchone()
    raw.close()
    assert row == ("mix", "2024-05-02T04:00:09.500Z", START.timestamp() + 9.5, 0, None, None)


def test_a_file_that_is_not_sqlite_is_left_byte_identical(tmp_path: Path) -> None:
    path = tmp_path / "detections.csv"
    content = b"id,start,end\n1,2024-05-02T04:00:03.000Z,2024-05-02T04:00:06.000Z\n"
    path.write_bytes(content)
    for opener in (lambda: SQLiteStore(path), lambda: SQLiteSink(path).open(run_info())):
        with pytest.raises(StoreError, match="not an SQLite database") as error:
            opener()
        assert str(path) in str(error.value)
        assert "\n" not in str(error.value)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["detections.csv"]


def test_a_directory_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="is a directory") as error:
        SQLiteStore(tmp_path)
    assert str(tmp_path / "birdd.db") in str(error.value)


def test_a_parent_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a folder")
    with pytest.raises(StoreError, match=r"cannot use .*data/birdd\.db: a parent is a file"):
        SQLiteStore(tmp_path / "data" / "birdd.db")
    assert (tmp_path / "data").read_text() == "not a folder"


def test_an_unwritable_directory_is_a_clear_error() -> None:
    # /proc refuses new files even to root, who can write to any ordinary directory
    with pytest.raises(StoreError, match=r"cannot write /proc/birdd\.db .*directory is writable"):
        SQLiteStore(Path("/proc/birdd.db"))


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "birdd.db"
    SQLiteStore(path).close()
    raw = sqlite3.connect(str(path))
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(StoreError, match=r"schema version 99.*upgrade birdd"):
        SQLiteStore(path)


# --- text outputs -----------------------------------------------------------------------------

TABLE = (
    "start (UTC)   begin (s)    end (s)  common name                     scientific name      "
    "           confidence\n"
    "04:00:03.000      3.000      6.000  American Robin                  Turdus migratorius   "
    "               0.8123\n"
    "04:00:09.500      9.500     12.500  Dog                             Dog                  "
    "               0.5500  (non-bird)\n"
)
CSV = (
    "id,start,end,offset_start,offset_end,scientific,common,code,is_bird,confidence,channel,source\n"
    "3f2a9c0e5b7d4e1fa6c8b0d2e4f61a3c,2024-05-02T04:00:03.000Z,2024-05-02T04:00:06.000Z,"
    "3.000,6.000,Turdus migratorius,American Robin,amerob,true,0.8123,1,dawn_chorus.wav\n"
    "9b1d7e3c5a2f4b6d8e0c1a3f5b7d9e2a,2024-05-02T04:00:09.500Z,2024-05-02T04:00:12.500Z,"
    "9.500,12.500,Dog,Dog,,false,0.5500,mix,dawn_chorus.wav\n"
)
RAVEN = (
    "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)"
    "\tSpecies Code\tCommon Name\tConfidence\n"
    "1\tSpectrogram 1\t2\t3.000\t6.000\t0\t15000\tamerob\tAmerican Robin\t0.8123\n"
    "2\tSpectrogram 1\t1\t9.500\t12.500\t0\t15000\t\tDog\t0.5500\n"
)


def printed(fmt: str) -> str:
    """What an output sink prints for the two detections, delivered in two batches."""
    stream = io.StringIO()
    sink = OutputSink(fmt, stream=stream)
    sink.open(run_info())
    sink.write(TWO[:1])
    sink.write(TWO[1:])
    sink.close("complete")
    return stream.getvalue()


def test_table_output() -> None:
    assert printed("table") == TABLE


def test_jsonl_output_is_one_record_per_line() -> None:
    text = printed("jsonl")
    assert text == "".join(json.dumps(d.to_record()) + "\n" for d in TWO)
    assert [json.loads(line) for line in text.splitlines()] == [d.to_record() for d in TWO]


def test_csv_output_parses_back() -> None:
    text = printed("csv")
    assert text == CSV
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [row["common"] for row in rows] == ["American Robin", "Dog"]
    assert [row["code"] for row in rows] == ["amerob", ""]
    assert [row["channel"] for row in rows] == ["1", "mix"]


def test_raven_output_parses_back() -> None:
    text = printed("raven")
    assert text == RAVEN
    rows = list(csv.DictReader(io.StringIO(text), delimiter="\t"))
    assert [row["Selection"] for row in rows] == ["1", "2"]
    assert [row["Channel"] for row in rows] == ["2", "1"]
    assert [float(row["Begin Time (s)"]) for row in rows] == [3.0, 9.5]
    assert {row["High Freq (Hz)"] for row in rows} == {"15000"}


@pytest.mark.parametrize("dash", ["-", Path("-")])
def test_a_dash_prints_to_stdout(
    dash, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`--output -` (a str) and `output.path: "-"` (the config's Path) both mean stdout."""
    monkeypatch.chdir(tmp_path)
    sink = make_output_sink("jsonl", dash)
    sink.open(run_info())
    sink.write(TWO)
    sink.close("complete")
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert not (tmp_path / "-").exists()


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="table, jsonl, csv, raven"):
        make_output_sink("xlsx", None)


@pytest.mark.parametrize("status", ["complete", "interrupted"])
def test_file_output_appears_when_the_run_ends(tmp_path: Path, status: str) -> None:
    path = tmp_path / "out" / "detections.csv"
    sink = make_output_sink("csv", str(path))
    sink.open(run_info())
    sink.write(TWO)
    assert not path.exists()
    sink.close(status)
    assert path.read_text(encoding="utf-8") == CSV
    assert sorted(p.name for p in path.parent.iterdir()) == ["detections.csv"]


def test_a_failed_run_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "detections.txt"
    path.write_text("yesterday's table\n")
    sink = make_output_sink("raven", str(path))
    sink.open(run_info())
    sink.write(TWO)
    sink.close("failed")
    assert path.read_text() == "yesterday's table\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["detections.txt"]


def test_output_to_dev_null_leaves_the_device_alone() -> None:
    sink = make_output_sink("jsonl", os.devnull)
    sink.open(run_info())
    sink.write(TWO)
    sink.close("complete")
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_output_to_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="is a directory"):
        make_output_sink("csv", str(tmp_path)).open(run_info())


@pytest.mark.system  # starts a fresh process
def test_stdout_into_a_closed_pipe_ends_quietly() -> None:
    """``birdd simulate ... | head -n 1``: no traceback, even when more is printed afterwards."""
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import test_sinks as t; "
        "from birdd.daemon.sinks.files import make_output_sink; "
        "sink = make_output_sink('jsonl', '-'); sink.open(t.run_info()); "
        "[sink.write(t.TWO) for _ in range(3000)]; sink.close('complete'); print('summary')"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script, str(Path(__file__).parent)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as writer:
        assert writer.stdout is not None and writer.stderr is not None
        first_line = writer.stdout.readline()
        writer.stdout.close()
        errors = writer.stderr.read().decode()
        assert writer.wait(timeout=30) == 0, errors
    assert json.loads(first_line)["id"] == ROBIN_DETECTION.id
    assert errors == ""


# --- fan-out ----------------------------------------------------------------------------------


class RecordingSink(Sink):
    """Remembers what it was given; optionally slow, or failing on a given batch."""

    def __init__(self, label: str, delay_s: float = 0.0, fail_on_batch: int = -1) -> None:
        self.label = label
        self.delay_s = delay_s
        self.fail_on_batch = fail_on_batch
        self.batches: List[List[str]] = []
        self.events: List[str] = []
        self.threads: set = set()

    @property
    def name(self) -> str:
        return self.label

    def open(self, run: RunInfo) -> None:
        self.events.append(f"open {run.run_id}")

    def write(self, detections) -> None:
        self.threads.add(threading.current_thread().name)
        if len(self.batches) == self.fail_on_batch:
            raise OSError(28, "No space left on device")
        time.sleep(self.delay_s)
        self.batches.append([d.id for d in detections])

    def close(self, status: str) -> None:
        self.events.append(f"close {status}")


def test_pump_writes_until_the_end_marker_and_keeps_draining_after_an_error() -> None:
    import queue

    batches: queue.Queue = queue.Queue()
    for batch in ([ROBIN_DETECTION], [DOG_DETECTION], [ROBIN_DETECTION], None):
        batches.put(batch)
    sink = RecordingSink("broken", fail_on_batch=1)
    error = pump(sink, batches)
    assert isinstance(error, OSError)
    assert sink.batches == [[ROBIN_DETECTION.id]]
    assert batches.empty()


def test_fanout_delivers_every_batch_in_order_and_drains_on_close() -> None:
    slow, fast = RecordingSink("slow", delay_s=0.002), RecordingSink("fast")
    fanout = SinkFanout([slow, fast], maxsize=2)
    fanout.open(run_info())
    expected = []
    for index in range(30):
        batch = [dataclasses.replace(ROBIN_DETECTION, id=f"{index:032x}")]
        fanout.publish(batch)
        expected.append([batch[0].id])
    fanout.publish([])
    fanout.close("complete")
    for sink in (slow, fast):
        assert sink.batches == expected
        assert sink.events == ["open run-1", "close complete"]
        assert sink.threads == {f"sink {sink.name}"}


def test_a_failing_sink_is_logged_once_and_raised_from_close(caplog) -> None:
    broken, healthy = RecordingSink("csv to /full/disk.csv", fail_on_batch=1), RecordingSink("db")
    fanout = SinkFanout([broken, healthy], maxsize=1)
    fanout.open(run_info())
    with caplog.at_level(logging.ERROR):
        for _ in range(5):
            fanout.publish(TWO)
        with pytest.raises(SinkError) as error:
            fanout.close("complete")
    assert str(error.value) == "csv to /full/disk.csv: [Errno 28] No space left on device"
    assert caplog.text.count("csv to /full/disk.csv") == 1
    assert broken.events[-1] == "close failed"
    assert healthy.events[-1] == "close complete"
    assert len(healthy.batches) == 5


def test_a_sink_that_cannot_open_closes_the_others(tmp_path: Path) -> None:
    opened = RecordingSink("stdout")
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("field notes\n")
    fanout = SinkFanout([opened, SQLiteSink(not_a_db)])
    with pytest.raises(SinkError, match=r"notes\.txt exists and is not an SQLite database"):
        fanout.open(run_info())
    assert opened.events == ["open run-1", "close failed"]
    assert not_a_db.read_text() == "field notes\n"


def test_fanout_with_real_sinks_end_to_end(tmp_path: Path) -> None:
    path = tmp_path / "birdd.db"
    stream = io.StringIO()
    fanout = SinkFanout([SQLiteSink(path), OutputSink("csv", stream=stream)], maxsize=4)
    fanout.open(run_info())
    fanout.publish(TWO[:1])
    fanout.publish(TWO[1:])
    fanout.close("complete")
    assert stream.getvalue() == CSV
    with SQLiteStore(path) as store:
        assert store.detections() == [d.to_record() for d in TWO]
        assert store.runs()[0]["status"] == "complete"
