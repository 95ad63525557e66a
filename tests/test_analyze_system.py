"""``birdd analyze`` end to end with BirdNET: a folder of mixed formats with a corrupt file and
one file analysed before, the same detections as ``--simulate``, resume after ``kill -9`` with
every file once in the store, and the exit codes."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Dict, List

import pytest
import soundfile
from birdd_testing import THRUSH, birdd_command, jsonl_rows, read_mono, recording, run_birdd

pytestmark = pytest.mark.system

FILES = 12
JURA = "maad_jura_S4A03895_20190522_060000.wav"  # 22 kHz, the file name dates it


def mixed_folder(root: Path) -> Path:
    """flac 32 kHz, ogg, wav 22 kHz, an mp3 and a 48 kHz stereo wav in a sub-folder, and a
    corrupt wav."""
    folder = root / "card"
    (folder / "sub").mkdir(parents=True)
    for name in (THRUSH, "Erithacus_rubecula_robin.ogg", JURA):
        shutil.copy(recording(name), folder / name)
    pykanto = recording("pykanto_audiomoth_20210502_040000.wav")
    audio, rate = soundfile.read(str(pykanto), dtype="float32")
    soundfile.write(str(folder / "sub" / "20210502_040000.mp3"), audio, rate, format="MP3")
    mono = read_mono(recording(THRUSH))[: 10 * 48000]
    soundfile.write(str(folder / "sub" / "stereo.wav"), [[s, s] for s in mono], 48000)
    (folder / "sub" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    return folder


def query(db: Path, sql: str) -> List[tuple]:
    connection = sqlite3.connect(str(db))
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def test_a_mixed_folder_with_a_corrupt_file_and_one_done_before(
    birdnet_model: Path, tmp_path: Path
) -> None:
    folder = mixed_folder(tmp_path)
    db, tables = tmp_path / "birdd.sqlite", tmp_path / "tables"
    first = run_birdd("analyze", str(folder / JURA), "--db", str(db), "--output", str(tables))
    assert first.returncode == 0, first.stderr
    result = run_birdd("analyze", str(folder), "--db", str(db), "--output", str(tables))
    assert result.returncode == 1, result.stderr  # one file failed
    summary = result.stdout.splitlines()[0]
    assert "complete: 4 of 5 file(s) analysed, 1 failed, 1 skipped" in summary
    assert "h of audio in" in summary and "x real time" in summary
    assert f"failed: {folder / 'sub' / 'broken.wav'}: cannot decode" in result.stdout
    files = query(db, "SELECT path, status, reason, run_id FROM analyzed_files ORDER BY path")
    assert [Path(path).name for path, *_ in files] == [
        "Erithacus_rubecula_robin.ogg",
        JURA,
        THRUSH,
        "20210502_040000.mp3",
        "broken.wav",
        "stereo.wav",
    ]
    statuses = {Path(path).name: (status, reason) for path, status, reason, _ in files}
    assert statuses["broken.wav"][0] == "failed" and "cannot decode" in statuses["broken.wav"][1]
    assert query(db, "SELECT mode, status FROM runs") == [("analyze", "complete")] * 2
    per_source = query(db, "SELECT source, COUNT(DISTINCT run_id) FROM detections GROUP BY source")
    assert per_source and all(runs == 1 for _, runs in per_source)
    jura = query(db, f"SELECT MIN(start_utc) FROM detections WHERE source LIKE '%{JURA}'")
    assert jura[0][0].startswith("2019-05-22T06:00")  # the recorder stamp in its name
    made = sorted(str(path.relative_to(tables)) for path in tables.rglob("*.txt"))
    assert made == sorted(
        [
            "Erithacus_rubecula_robin.BirdNET.selection.table.txt",
            "maad_jura_S4A03895_20190522_060000.BirdNET.selection.table.txt",
            "opensoundscape_1min_first30s.BirdNET.selection.table.txt",
            "sub/20210502_040000.BirdNET.selection.table.txt",
            "sub/stereo.BirdNET.selection.table.txt",
        ]
    )
    thrush_table = (tables / "opensoundscape_1min_first30s.BirdNET.selection.table.txt").read_text()
    assert thrush_table.startswith("Selection\tView\tChannel") and "Wood Thrush" in thrush_table


def test_the_same_detections_as_simulate(birdnet_model: Path, tmp_path: Path) -> None:
    thrush = recording(THRUSH)
    flags = ("--per-window", "--format", "jsonl", "--min-conf", "0.3")
    analyzed = run_birdd("analyze", str(thrush), "--db", str(tmp_path / "a.sqlite"), *flags)
    simulated = run_birdd("--simulate", str(thrush), "--db", str(tmp_path / "s.sqlite"), *flags)
    assert analyzed.returncode == simulated.returncode == 0, analyzed.stderr + simulated.stderr
    assert "complete: 1 of 1 file(s) analysed" in analyzed.stderr  # stdout holds the jsonl

    def essence(rows: List[Dict]) -> List[tuple]:
        return sorted(
            (row["start"], row["species"]["scientific"], row["confidence"]) for row in rows
        )

    rows = jsonl_rows(analyzed.stdout)
    assert len(rows) > 10 and essence(rows) == essence(jsonl_rows(simulated.stdout))


def test_kill_9_mid_job_then_resume_analyses_every_file_once(
    birdnet_model: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "archive"
    folder.mkdir()
    for number in range(FILES):
        shutil.copy(recording(THRUSH), folder / f"rec{number:02d}.flac")
    db = tmp_path / "birdd.sqlite"
    command = birdd_command("analyze", str(folder), "--db", str(db), "--workers", "2")
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    done = 0
    while done < 2 and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.05)
        if db.is_file():
            try:
                done = query(db, "SELECT COUNT(*) FROM analyzed_files")[0][0]
            except sqlite3.OperationalError:  # the table is not there yet
                continue
    job.send_signal(signal.SIGKILL)
    job.wait(30)
    killed_at = query(db, "SELECT COUNT(*) FROM analyzed_files")[0][0]
    assert 2 <= killed_at < FILES, "the job ended before it could be killed mid-way"
    resumed = run_birdd("analyze", str(folder), "--db", str(db), "--workers", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{killed_at} skipped" in resumed.stdout
    rows = query(db, "SELECT path, status FROM analyzed_files")
    assert sorted(rows) == sorted((str(path), "done") for path in folder.iterdir())
    per_source = query(
        db, "SELECT source, COUNT(DISTINCT run_id), COUNT(*) FROM detections GROUP BY source"
    )
    assert len(per_source) == FILES and {(runs, n) for _, runs, n in per_source} == {
        (1, per_source[0][2])
    }
    assert [status for (status,) in query(db, "SELECT status FROM runs ORDER BY rowid")] == [
        "interrupted",
        "complete",
    ]


def test_exit_codes_and_one_line_errors(birdnet_model: Path, tmp_path: Path) -> None:
    db = str(tmp_path / "birdd.sqlite")
    bad = run_birdd("analyze", str(tmp_path / "nothing-here"), "--db", db)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0, bad.stderr
    assert "nothing-here: no such file or folder" in bad.stderr
    workers = run_birdd("analyze", str(recording(THRUSH)), "--workers", "0")
    assert workers.returncode == 2 and "give 1 or more worker processes" in workers.stderr
    robin = str(recording("Erithacus_rubecula_robin.ogg"))
    assert run_birdd("analyze", robin, "--db", db).returncode == 0
    again = run_birdd("analyze", robin, "--db", db)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    forced = run_birdd("analyze", robin, "--db", db, "--force")
    assert forced.returncode == 0 and "complete: 1 of 1 file(s) analysed" in forced.stdout
    assert query(Path(db), "SELECT COUNT(*) FROM analyzed_files")[0][0] == 1
