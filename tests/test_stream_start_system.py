"""Many network inputs started together: 30 real-time HTTP WAV streams from a local server
(tests/http_streams.py) into one `birdd run`. Before the start gate, 100 ffmpeg processes
started at once left 16 of them past the watchdog before their first audio (each restarted,
~8 s lost as a gap), most of it ffmpeg probing 5 s of each stream before its first output.
Now every input starts without a gap and delivers audio, through ffmpeg processes and through
PyAV in the daemon (``audio.decoder``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from birdd_testing import THRUSH, jsonl_rows, recording, run_birdd
from http_streams import StreamServer

STREAMS = 30
RUN_S = 20
WATCHDOG_S = 3
"""Tighter than the default 5 s, so that a slow start is caught on a fast machine too."""


@pytest.mark.parametrize("decoder", ["ffmpeg", "pyav"])
def test_thirty_streams_start_together_without_gaps(
    birdnet_model: Path, tmp_path: Path, decoder: str
) -> None:
    db = tmp_path / "db.sqlite"
    config = tmp_path / "birdd.yaml"
    config.write_text(
        f"audio:\n  watchdog_s: {WATCHDOG_S}\n  ring_buffer_s: 10\n  decoder: {decoder}\n"
    )
    with StreamServer([recording(THRUSH)]) as server:
        urls = [server.url(index) for index in range(STREAMS)]
        inputs = [arg for url in urls for arg in ("--input", url)]
        result = run_birdd(
            "run",
            *("--config", str(config), "--db", str(db), "--duration", str(RUN_S)),
            *("--format", "jsonl", "--per-window", "--min-conf", "0.3", "--batch-size", "8"),
            *inputs,
            timeout=120,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no audio for" not in result.stderr, result.stderr[-3000:]
    # Plain HTTP WAV with pyav goes through the process's one stream reader, not PyAV threads.
    via = "the stream reader (wav)" if decoder == "pyav" else "ffmpeg"
    assert result.stderr.count(f"through {via}") == STREAMS
    gaps = sqlite3.connect(str(db)).execute("SELECT source, seconds, reason FROM gaps").fetchall()
    assert gaps == []
    heard = {row["source"] for row in jsonl_rows(result.stdout)}
    assert heard == set(urls), f"no detections from {sorted(set(urls) - heard)}"
