"""The Parquet sink without a model: typed columns, row groups written as detections come, the
rows equal to the JSON-lines records, the temporary name until the run ends, and one line
naming the extra when pyarrow is missing."""

from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import List

import pytest
from parquet_rows import assert_same
from test_sinks import DOG_DETECTION, ROBIN_DETECTION, run_info

from birdd.daemon.app.cli import main
from birdd.daemon.records import Detection
from birdd.daemon.sinks.base import SinkError
from birdd.daemon.sinks.files import make_output_sink
from birdd.daemon.sinks.parquet import MISSING, ParquetSink, import_pyarrow

pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed: birdd[parquet]")


def many(count: int) -> List[Detection]:
    """``count`` detections a second apart, alternating the robin (channel 1) and the dog
    (the mix, no species code)."""
    detections = []
    for index in range(count):
        model = (ROBIN_DETECTION, DOG_DETECTION)[index % 2]
        shift = timedelta(seconds=index, microseconds=1500)  # sub-millisecond: cut like iso_utc
        detections.append(
            replace(model, id=f"d{index}", start=model.start + shift, end=model.end + shift)
        )
    return detections


def test_rows_are_the_jsonl_records_in_typed_columns_and_row_groups(tmp_path: Path) -> None:
    path, detections = tmp_path / "out.parquet", many(7)
    sink = ParquetSink(path, row_group_rows=3)
    sink.open(run_info("run-7"))
    sink.write(detections[:2])
    sink.write(detections[2:5])  # 5 rows: the first group of 5 is written, none held
    sink.write(detections[5:])
    sink.close("complete")
    parquet = pq.ParquetFile(str(path))
    assert [parquet.metadata.row_group(i).num_rows for i in range(2)] == [5, 2]
    schema = parquet.schema_arrow
    assert str(schema.field("start").type) == "timestamp[ms, tz=UTC]"
    assert str(schema.field("confidence").type) == "float"  # float32
    assert str(schema.field("windows").type) == "int32"
    rows = parquet.read().to_pylist()
    records = [json.loads(json.dumps(d.to_record())) for d in detections]
    assert_same(rows, records)
    assert [row["id"] for row in rows] == [f"d{i}" for i in range(7)]
    assert {row["run_id"] for row in rows} == {"run-7"}
    assert rows[1]["code"] is None and rows[0]["channel"] == "1" and rows[1]["channel"] == "mix"


def test_the_file_appears_only_when_the_run_ends(tmp_path: Path) -> None:
    kept, dropped = tmp_path / "kept.parquet", tmp_path / "dropped.parquet"
    for path, status in ((kept, "interrupted"), (dropped, "failed")):
        sink = ParquetSink(path)
        sink.open(run_info())
        sink.write(many(2))
        assert not path.exists()
        sink.close(status)
    assert pq.read_table(str(kept)).num_rows == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.parquet"]


def test_a_device_or_a_pipe_is_refused_never_replaced(tmp_path: Path) -> None:
    """The file is renamed into place at the end: over /dev/null (as root) or a FIFO that
    would replace the device or pipe, so they are refused at open."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path in (fifo, tmp_path):
        with pytest.raises(SinkError, match="not a regular file"):
            ParquetSink(path).open(run_info())
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_parquet_is_a_file_never_stdout() -> None:
    with pytest.raises(ValueError, match=r"give --output FILE\.parquet"):
        make_output_sink("parquet", None)


def test_without_pyarrow_one_line_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # what an install without it meets
    with pytest.raises(ValueError, match=r"pip install 'birdd\[parquet\]'"):
        import_pyarrow()
    output = ["--format", "parquet", "--combined", "--output", str(tmp_path / "all.parquet")]
    assert main(["analyze", str(tmp_path), *output]) == 2
    assert capsys.readouterr().err.strip() == f"birdd: error: {MISSING}"
