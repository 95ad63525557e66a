"""Detection clips end to end with the real model on real recordings: `birdd --simulate`,
`birdd run` (stdin) and `birdd analyze` with `--clips DIR`; the clips' samples against the
resampled source, one clip per event, SQLite and MQTT carrying them, and the privacy guard on
real read speech (LibriSpeech, in the repository) mixed into the thrush soundscape."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import List, Tuple

import jsonschema
import numpy as np
import pytest
import soundfile
from birdd_testing import (
    RATE,
    THRUSH,
    jsonl_rows,
    read_mono,
    recording,
    run_birdd,
    write_48k,
)
from broker import Subscriber

from birdd.daemon.mqtt.messages import load_schema_check

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parent.parent
STATS_SCHEMA = json.loads((REPO / "docs" / "schema" / "stats.v1.json").read_text())
SPEECH = "negatives/speech_librispeech_198-209-0000.ogg"
SPEECH_AT = (3.0, 9.0)  # seconds of the thrush recording the speech is mixed into
HUMAN = "Human vocal,Human whistle,Human non-vocal"
PRE, POST = 1.5, 2.0
LSB = 1 / 32768  # 16-bit clips: the samples agree to half of this


def clips_config(folder: Path, **privacy: object) -> Path:
    config = folder / "config.yaml"
    settings = {"clips": {"pre_s": PRE, "post_s": POST, "privacy": privacy}}
    config.write_text(json.dumps(settings))  # JSON is YAML
    return config


def simulate(path: Path, folder: Path, *flags: str) -> Tuple[str, List[dict]]:
    """`birdd --simulate` at 0.4 with jsonl output: stderr and the detections."""
    result = run_birdd(
        *("--simulate", str(path), "--min-conf", "0.4", "--format", "jsonl"),
        *("--db", str(folder / "db.sqlite"), "--start-time", "2024-05-02T04:00:00Z", *flags),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr, jsonl_rows(result.stdout)


def clip_audio(row: dict) -> np.ndarray:
    audio, rate = soundfile.read(row["clip"]["path"], dtype="float32")
    assert rate == RATE and len(audio) == round(row["clip"]["duration_s"] * RATE)
    assert (
        hashlib.sha256(Path(row["clip"]["path"]).read_bytes()).hexdigest() == row["clip"]["sha256"]
    )
    return audio


def expected_span(row: dict, length: int) -> Tuple[int, int]:
    """The clip's samples in the stream: the event with PRE before and POST after it, inside
    the recording."""
    start = max(0, round((row["offset_start"] - PRE) * RATE))
    return start, min(length, round((row["offset_end"] + POST) * RATE))


def assert_clips_are_the_source(rows: List[dict], source: np.ndarray) -> None:
    for row in rows:
        start, end = expected_span(row, len(source))
        audio = clip_audio(row)
        assert len(audio) == end - start, row["species"]
        assert np.abs(audio - source[start:end]).max() <= LSB / 2 + 1e-7
        if start > 0:  # one sample off shows (the resampled thrush moves that much)
            assert np.abs(audio - source[start - 1 : end - 1]).max() > 100 * LSB


def test_clips_hold_the_resampled_recording_exactly_one_per_event(birdnet_model, tmp_path):
    """The 32 kHz thrush: each clip equals the recording resampled to 48 kHz (soxr, whole
    file) from PRE before its event to POST after it, to 16-bit rounding; the Wood Thrush's
    event of ten windows is one clip of the whole 30 s; SQLite holds the same clips."""
    folder = tmp_path / "clips"
    path = recording(THRUSH)
    _, rows = simulate(
        path, tmp_path, "--config", str(clips_config(tmp_path)), "--clips", str(folder)
    )
    source = read_mono(path)
    assert all(row.get("clip") for row in rows) and len(rows) >= 8
    assert sorted(folder.rglob("*.flac")) == sorted(Path(row["clip"]["path"]) for row in rows)
    assert_clips_are_the_source(rows, source)
    [thrush] = [row for row in rows if row["species"]["scientific"] == "Hylocichla mustelina"]
    assert thrush["windows"] == 10 and thrush["clip"]["duration_s"] == 30.0
    with contextlib.closing(sqlite3.connect(str(tmp_path / "db.sqlite"))) as conn:
        stored = dict(conn.execute("SELECT clip_path, clip_duration_s FROM detections"))
    assert stored == {row["clip"]["path"]: row["clip"]["duration_s"] for row in rows}


def test_a_recording_longer_than_the_ring_keeps_every_clip_exact(birdnet_model, tmp_path):
    """Eight thrush recordings end to end (240 s at 48 kHz) through a ring of the 167 s
    clips ask for: the file is read far ahead of the engine, and only the clip writer's hold
    on the ring keeps each clip's audio until it is cut (simulate never drops one)."""
    thrush = read_mono(recording(THRUSH))
    path = tmp_path / "thrush_x8.wav"
    soundfile.write(str(path), np.tile(thrush, 8), RATE, subtype="FLOAT")
    config = clips_config(tmp_path)
    config.write_text(config.read_text()[:-1] + ', "audio": {"ring_buffer_s": 10}}')
    stderr, rows = simulate(path, tmp_path, "--config", str(config), "--clips", str(tmp_path / "c"))
    assert len(rows) >= 40 and all(row.get("clip") for row in rows)
    assert_clips_are_the_source(rows, read_mono(path))
    assert f"clips: {len(rows)} written, 0 not kept (speech), 0 dropped (backlog)" in stderr


def test_birdd_run_cuts_the_same_clips_live(birdnet_model, tmp_path):
    """`birdd run` on a 48 kHz WAV on stdin (the live pipeline: capture ring, live clock,
    hold-down): every clip equals the recording at its event's offsets."""
    wav = write_48k(recording(THRUSH), tmp_path / "thrush48.wav")
    config = clips_config(tmp_path)
    with wav.open("rb") as stdin:
        result = run_birdd(
            *("run", "--input", "-", "--min-conf", "0.4", "--format", "jsonl"),
            *("--db", str(tmp_path / "db.sqlite"), "--config", str(config)),
            *("--clips", str(tmp_path / "clips")),
            stdin=stdin,
            timeout=120,
        )
    assert result.returncode == 0, result.stderr
    rows = jsonl_rows(result.stdout)
    assert len(rows) >= 5 and all(row.get("clip") for row in rows)
    assert_clips_are_the_source(rows, read_mono(wav))
    assert f"clips: {len(rows)} written, 0 not kept (speech)" in result.stderr


def test_birdd_analyze_saves_clips_with_its_rows(birdnet_model, tmp_path):
    """`birdd analyze DIR --clips` runs each file through the same pipeline: every stored
    detection names its clip, and the clip is there."""
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "thrush.flac").write_bytes(recording(THRUSH).read_bytes())
    result = run_birdd(
        *("analyze", str(archive), "--workers", "1", "--min-conf", "0.4"),
        *("--db", str(tmp_path / "db.sqlite"), "--clips", str(tmp_path / "clips")),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    with contextlib.closing(sqlite3.connect(str(tmp_path / "db.sqlite"))) as conn:
        rows = conn.execute("SELECT clip_path, clip_duration_s FROM detections").fetchall()
    assert len(rows) >= 8
    for path, duration in rows:
        assert soundfile.info(path).frames == round(duration * RATE)
    assert len(list((tmp_path / "clips").rglob("*.flac"))) == len(rows)


@pytest.fixture(scope="module")
def speech_mix(birdnet_model, tmp_path_factory) -> Tuple[Path, List[Tuple[float, float]]]:
    """The thrush with 6 s of read speech mixed in at 3-9 s, as a 48 kHz WAV, and the windows
    in which BirdNET hears people (a human class at 0.1 or more), checked here rather than
    assumed: the speech windows and no other."""
    folder = tmp_path_factory.mktemp("speech")
    mix = read_mono(recording(THRUSH))
    speech = read_mono(recording(SPEECH))
    start, end = (round(s * RATE) for s in SPEECH_AT)
    mix[start:end] += speech[: end - start]
    path = folder / "thrush_speech.wav"
    soundfile.write(str(path), mix, RATE, subtype="FLOAT")
    _, rows = simulate(
        path, folder, "--non-birds", "--include", HUMAN, "--min-conf", "0.1", "--per-window"
    )
    heard = sorted({(row["offset_start"], row["offset_end"]) for row in rows})
    assert heard == [(3.0, 6.0), (6.0, 9.0)], rows
    return path, heard


def overlaps(start: float, end: float, windows: List[Tuple[float, float]]) -> bool:
    return any(lo < end and hi > start for lo, hi in windows)


def test_no_clip_is_kept_where_birdnet_hears_speech(speech_mix, broker, tmp_path):
    """Clips whose span (with the roll) overlaps a window with speech are not written; the
    others are; their detections all reach SQLite and the broker, valid for the hub, and the
    last stats message counts them."""
    path, heard = speech_mix
    folder = tmp_path / "clips"
    with Subscriber(broker, "birdd/garden/#") as station:
        stderr, rows = simulate(
            path, tmp_path, "--config", str(clips_config(tmp_path)), "--clips", str(folder),
            "--station", "garden", "--mqtt", broker.url,
        )  # fmt: skip
        station.wait_for(lambda ms: ms[-1].topic == "birdd/garden/status", timeout=10)
        messages = station.messages
    near = [r for r in rows if overlaps(r["offset_start"] - PRE, r["offset_end"] + POST, heard)]
    kept = [r for r in rows if r not in near]
    assert len(near) >= 3 and len(kept) >= 3
    assert all("clip" not in row for row in near) and all(row["clip"] for row in kept)
    assert len(list(folder.rglob("*.flac"))) == len(kept)
    check = load_schema_check()
    published = [json.loads(m.payload) for m in messages if m.topic.endswith("/detections")]
    assert sorted(m["id"] for m in published) == sorted(r["id"] for r in rows)
    assert all(check(message) is None for message in published)
    stats = [json.loads(m.payload) for m in messages if m.topic.endswith("/stats")]
    for report in stats:
        jsonschema.validate(report, STATS_SCHEMA)
    counts = {key: stats[-1][key] for key in stats[-1] if "dropped" in key and key != "dropped"}
    assert stats[-1]["clips_written"] == len(kept)
    assert counts == {
        "clips_dropped_privacy": len(near),
        "clips_dropped_backlog": 0,
        "clips_dropped_disk": 0,
        "detections_dropped_privacy": 0,
    }
    assert f"clips: {len(kept)} written, {len(near)} not kept (speech)" in stderr


def test_detections_near_speech_can_be_dropped_without_clips(speech_mix, tmp_path):
    """clips.privacy.drop_detections_within_s: 3 with clips off: the detections within 3 s of
    a speech window are gone, the rest are the same as without it."""
    path, heard = speech_mix
    _, every = simulate(path, tmp_path)
    config = clips_config(tmp_path, drop_detections_within_s=3.0)
    stderr, rows = simulate(path, tmp_path, "--config", str(config))
    near = [r for r in every if overlaps(r["offset_start"] - 3, r["offset_end"] + 3, heard)]
    assert near and len(near) < len(every)
    key = ("offset_start", "species")
    assert sorted(str([r[k] for k in key]) for r in rows) == sorted(
        str([r[k] for k in key]) for r in every if r not in near
    )
    assert f"{len(near)} dropped near speech" in stderr and "clips:" not in stderr


def test_a_clips_folder_that_cannot_be_made_is_one_line_and_exit_2(birdnet_model, tmp_path):
    """Refused before the run is opened: no database is left behind."""
    (tmp_path / "file").write_text("")
    result = run_birdd(
        *("--simulate", str(recording(THRUSH)), "--db", str(tmp_path / "db.sqlite")),
        *("--clips", str(tmp_path / "file" / "clips")),
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("birdd: error: clips.dir ")
    assert "give a writable folder" in result.stderr and not (tmp_path / "db.sqlite").exists()
