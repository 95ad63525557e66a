"""``birdd analyze --ray ADDRESS`` on a real local Ray cluster (``ray start --head``, 2 CPUs,
a 500 MB object store): the same detections and file rows as the local pool on the same
folder (its combined Parquet holds the local pool's JSON lines), the corrupt file listed as
failed (exit 1), and a rerun that skips what is done. Without Ray installed, ``--ray`` fails in
one line naming the extra (exit 2)."""

from __future__ import annotations

import importlib.util
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List

import pytest
from birdd_testing import THRUSH, jsonl_rows, recording, run_birdd
from broker import free_port
from parquet_rows import assert_same, read_parquet
from ray_cluster import RayHead

from birdd.daemon.app.cli import main

RAY_MISSING = "ray is not installed: bash tests/install.sh installs birdd[ray]"
CORRUPT = b"RIFF\x00\x00\x00\x00WAVEjunk" * 10


def query(db: Path, sql: str) -> List[tuple]:
    connection = sqlite3.connect(str(db))
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    """A real Ray head on free ports; afterwards none of its processes may be left."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip(RAY_MISSING)
    head = RayHead(cpus=2, object_store_mb=500).start()
    try:
        yield head
    finally:
        head.stop()
    assert head.processes() == [], "Ray processes survived the cluster's teardown"


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """flac 32 kHz, ogg (no recorder stamp: its start comes from the modification time),
    a stamped wav 22 kHz, and a corrupt wav."""
    folder = tmp_path_factory.mktemp("ray") / "card"
    folder.mkdir()
    for name in (THRUSH, "Erithacus_rubecula_robin.ogg", "maad_jura_S4A03895_20190522_060000.wav"):
        shutil.copy2(recording(name), folder / name)
    (folder / "broken.wav").write_bytes(CORRUPT)
    return folder


def ray_analyze(head: RayHead, *args: str) -> subprocess.CompletedProcess:
    return run_birdd("analyze", *args, "--ray", head.address, env=head.env)


def detections(db: Path) -> List[tuple]:
    return query(
        db,
        "SELECT source, channel, start_utc, end_utc, scientific, ROUND(confidence, 5) "
        "FROM detections ORDER BY 1, 2, 3, 5",
    )


@pytest.mark.system
def test_ray_gives_what_the_local_pool_gives_and_resumes(
    birdnet_model: Path, ray_head: RayHead, card: Path, tmp_path: Path
) -> None:
    local_db, ray_db = tmp_path / "local.sqlite", tmp_path / "ray.sqlite"
    local_jsonl, ray_parquet = tmp_path / "local.jsonl", tmp_path / "ray.parquet"
    local_output = ["--format", "jsonl", "--combined", "--output", str(local_jsonl)]
    ray_output = ["--format", "parquet", "--combined", "--output", str(ray_parquet)]
    local = run_birdd("analyze", str(card), "--db", str(local_db), "--workers", "2", *local_output)
    on_ray = ray_analyze(ray_head, str(card), "--db", str(ray_db), *ray_output)
    assert local.returncode == on_ray.returncode == 1, local.stderr + on_ray.stderr
    assert "of the Ray cluster at " + ray_head.address in on_ray.stderr
    assert "complete: 3 of 4 file(s) analysed, 1 failed" in on_ray.stdout.splitlines()[0]
    broken = card / "broken.wav"
    assert f"failed: {broken}: cannot decode {broken}" in on_ray.stdout
    found = detections(ray_db)
    assert len(found) >= 8 and found == detections(local_db)
    files = "SELECT path, size, mtime_ns, status, audio_seconds, windows, detections, clock_origin"
    files += " FROM analyzed_files ORDER BY path"
    assert query(ray_db, files) == query(local_db, files)
    assert_same(read_parquet(ray_parquet), jsonl_rows(local_jsonl.read_text()))
    assert query(ray_db, "SELECT mode, status FROM runs") == [("analyze", "complete")]

    again = ray_analyze(ray_head, str(card), "--db", str(ray_db), "-q")  # resume
    assert again.returncode == 1, again.stderr  # the corrupt file is tried again, and fails
    assert "complete: 0 of 1 file(s) analysed, 1 failed, 3 skipped" in again.stdout
    assert detections(ray_db) == found
    statuses = query(ray_db, "SELECT status, COUNT(*) FROM analyzed_files GROUP BY 1 ORDER BY 1")
    assert statuses == [("done", 3), ("failed", 2)]  # each failed try is kept, as locally


@pytest.mark.system
def test_an_address_nothing_answers_on_is_refused_at_once(
    birdnet_model: Path, card: Path, tmp_path: Path
) -> None:
    if importlib.util.find_spec("ray") is None:
        pytest.skip(RAY_MISSING)
    address = f"127.0.0.1:{free_port()}"
    db = tmp_path / "birdd.sqlite"
    result = run_birdd("analyze", str(card), "--db", str(db), "--ray", address, timeout=60)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert f"--ray {address}: no Ray cluster answers there" in result.stderr
    assert not db.exists()  # refused before anything was written


def test_without_ray_one_line_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what 'import ray' meets without the extra
    assert main(["analyze", str(tmp_path), "--ray", "127.0.0.1:6379"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == "birdd: error: --ray needs Ray, an optional extra: pip install 'birdd[ray]'"
