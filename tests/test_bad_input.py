"""Bad input gets one clear line, a non-zero exit, and leaves no rows behind."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import soundfile
from birdd_testing import THRUSH, read_mono, recording, run_birdd

from birdd.engines.models.artifact import file_sha256, sidecar_path
from birdd.engines.models.install import BIRDNET_MODEL
from birdd.engines.models.modeldir import models_dir

pytestmark = pytest.mark.system  # every test starts birdd in a fresh process


def assert_one_clear_line(result, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) >= 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def assert_no_rows(db: Path) -> None:
    if db.exists():
        with sqlite3.connect(str(db)) as conn:
            assert conn.execute("SELECT COUNT(*) FROM detections").fetchone()[0] == 0
            assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


ROBIN = "Erithacus_rubecula_robin.ogg"  # any real recording: these runs end before scoring


def simulate(path: Path, db: Path, *extra: str):
    return run_birdd("--simulate", str(path), "--db", str(db), *extra)


def test_missing_file(tmp_path):
    result = simulate(tmp_path / "nope.wav", tmp_path / "db.sqlite")
    assert_one_clear_line(result, "not found")
    assert_no_rows(tmp_path / "db.sqlite")


def test_directory(tmp_path):
    result = simulate(tmp_path, tmp_path / "db.sqlite")
    assert_one_clear_line(result, "is a directory")


def test_zero_byte_file(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.touch()
    assert_one_clear_line(simulate(empty, tmp_path / "db.sqlite"), "empty")


def test_text_file_named_wav(tmp_path):
    fake = tmp_path / "notes.wav"
    fake.write_text("these are field notes, not audio\n" * 20)
    result = simulate(fake, tmp_path / "db.sqlite")
    assert_one_clear_line(result, "cannot decode", "notes.wav")
    assert_no_rows(tmp_path / "db.sqlite")


def test_truncated_mp3_decodes_what_is_there(birdnet_model, tmp_path):
    """The thrush recording as a 320 kbit/s mp3 cut after a third of its bytes (a recorder
    that lost power): the 9.9 s that are there, with the whole recording's detections."""
    whole = tmp_path / "thrush.mp3"
    samples = read_mono(recording(THRUSH), 32000)
    quality = {"compression_level": 0.0, "bitrate_mode": "CONSTANT"}
    soundfile.write(str(whole), samples, 32000, format="MP3", **quality)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[: len(data) // 3])
    result = simulate(
        cut, tmp_path / "db.sqlite", "--format", "jsonl", "--per-window", "--min-conf", "0.4"
    )
    assert "Traceback" not in result.stderr
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    found = sorted((r["species"]["scientific"], round(r["offset_start"])) for r in rows)
    assert found == [  # the first three windows' detections in the whole file at 0.4
        ("Hylocichla mustelina", 0),
        ("Hylocichla mustelina", 3),
        ("Hylocichla mustelina", 6),
        ("Mniotilta varia", 0),
        ("Seiurus aurocapilla", 6),
        ("Setophaga ruticilla", 3),
    ]
    assert "3 windows" in result.stderr


@pytest.mark.parametrize(
    "yaml_text, words",
    [
        ("windows:\n  overlap_s: 1\n  hop: 2\n", ["windows.hop", "unknown key"]),
        ("postprocess:\n  sensitivity: loud\n", ["postprocess.sensitivity", "'loud'"]),
        ("output:\n  format: xml\n", ["output.format", "'xml'", "jsonl"]),
        ("engine:\n  type: coral\n", ["engine", "coral", "tflite"]),
        ("station: [1, 2]\n", ["station"]),
        ("windows: {overlap_s: 1\n", ["not valid YAML"]),
    ],
)
def test_bad_config_file(tmp_path, yaml_text, words):
    config = tmp_path / "birdd.yaml"
    config.write_text(yaml_text)
    checked = run_birdd("check-config", str(config))
    assert checked.returncode == 2
    for word in words:
        assert word in checked.stdout, checked.stdout
    assert all(line.count(" | ") >= 2 for line in checked.stdout.splitlines()), checked.stdout
    result = run_birdd(
        "--simulate", "whatever.wav", "--config", str(config), "--db", str(tmp_path / "db.sqlite")
    )
    assert_one_clear_line(result, "config error", *words)
    assert_no_rows(tmp_path / "db.sqlite")


def test_reference_config_is_valid():
    result = run_birdd("check-config", str(Path(__file__).resolve().parents[1] / "config.yaml"))
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--overlap", "-1"], ["windows.overlap_s", "-1"]),
        (["--overlap", "3"], ["overlap_s", "0 to 2.9"]),
        (["--min-conf", "2"], ["postprocess.min_confidence"]),
        (["--include", "Dodo bird"], ["Dodo bird", "include"]),
        (["--format", "pdf"], ["output.format"]),
    ],
)
def test_bad_flags(birdnet_model, tmp_path, flags, words):
    db = tmp_path / "db.sqlite"
    result = simulate(recording(ROBIN), db, *flags)
    assert_one_clear_line(result, *words)
    assert_no_rows(db)


def test_flag_of_wrong_type(tmp_path):
    result = run_birdd("--simulate", "x.wav", "--overlap", "lots")
    assert result.returncode == 2 and "invalid float value" in result.stderr


def fake_model(tmp_path: Path, content: bytes, keep_hash: bool) -> Path:
    real = models_dir() / "birdnet" / BIRDNET_MODEL.name
    fake = tmp_path / "model.tflite"
    fake.write_bytes(content)
    meta = json.loads(sidecar_path(real).read_text())
    if not keep_hash:
        meta["sha256"] = file_sha256(fake)
    sidecar_path(fake).write_text(json.dumps(meta))
    return fake


@pytest.mark.parametrize(
    "content, keep_hash, words",
    [
        (b"not a model at all" * 100, False, ["cannot load TFLite model"]),
        (b"not a model at all" * 100, True, ["does not match its sidecar"]),
    ],
)
def test_model_file_that_is_not_a_model(birdnet_model, tmp_path, content, keep_hash, words):
    model = fake_model(tmp_path, content, keep_hash)
    db = tmp_path / "db.sqlite"
    result = simulate(recording(ROBIN), db, "--model", str(model))
    assert_one_clear_line(result, *words)
    assert_no_rows(db)


def test_sidecar_naming_the_wrong_sample_rate(birdnet_model, tmp_path):
    real = models_dir() / "birdnet" / BIRDNET_MODEL.name
    model = tmp_path / "model.tflite"
    model.symlink_to(real)
    meta = json.loads(sidecar_path(real).read_text())
    sidecar_path(model).write_text(json.dumps(dict(meta, sample_rate=32000)))
    db = tmp_path / "db.sqlite"
    result = simulate(recording(ROBIN), db, "--model", str(model))
    assert_one_clear_line(
        result, "window_samples 144000 is not window_s 3 s at sample_rate 32000 Hz (96000)"
    )
    assert_no_rows(db)


def test_model_without_sidecar(birdnet_model, tmp_path):
    model = tmp_path / "lonely.tflite"
    shutil.copy(models_dir() / "birdnet" / BIRDNET_MODEL.name, model)
    result = simulate(recording(ROBIN), tmp_path / "db.sqlite", "--model", str(model))
    assert_one_clear_line(result, "no sidecar")
