"""``birdd analyze --format parquet`` with BirdNET: the combined file and the per-file files
hold the rows the JSON-lines output of the same job holds, read back with pyarrow."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from birdd_testing import ENGINE_RECORDINGS, jsonl_rows, recording, run_birdd
from parquet_rows import assert_same, read_parquet

pytestmark = pytest.mark.system
pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed: birdd[parquet]")


def test_parquet_holds_what_jsonl_holds_combined_and_per_file(
    birdnet_model: Path, tmp_path: Path
) -> None:
    card = tmp_path / "card"
    card.mkdir()
    for name in ENGINE_RECORDINGS:  # flac 32 kHz, ogg 44.1 kHz, wav 22 kHz
        shutil.copy2(recording(name), card / name)
    db, combined = tmp_path / "birdd.sqlite", tmp_path / "all.parquet"
    parquet = ["--format", "parquet", "--combined", "--output", str(combined)]
    first = run_birdd("analyze", str(card), "--db", str(db), "--workers", "2", *parquet)
    assert first.returncode == 0, first.stderr
    again = ["analyze", str(card), "--db", str(db), "--force", "--workers", "1", "-q"]
    as_jsonl = run_birdd(*again, "--format", "jsonl")  # the combined output to stdout
    assert as_jsonl.returncode == 0, as_jsonl.stderr
    records = jsonl_rows(as_jsonl.stdout)
    assert len(records) >= 8
    rows = read_parquet(combined)
    assert_same(rows, records)  # the same job order, whatever order the workers finished in
    assert len({row["run_id"] for row in rows}) == 1

    tables = tmp_path / "tables"
    per_file = run_birdd(*again, "--format", "parquet", "--output", str(tables))
    assert per_file.returncode == 0, per_file.stderr
    for name in ENGINE_RECORDINGS:
        path = tables / (Path(name).stem + ".birdd.parquet")
        source = str(card / name)
        assert_same(read_parquet(path), [r for r in records if r["source"] == source])
