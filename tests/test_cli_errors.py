"""What a new user tripped over (issue #10): each wrong turn ends in one line that names the
fix, with the exit status the README gives (1 a failure while running, 2 bad input); the
demo says when its recording starts; damaged samples are counted; a run leaves nothing alive
at exit."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
from birdd_testing import THRUSH, read_mono, recording, run_birdd, simulate_rows

from birdd.engines.models.modeldir import models_dir

pytestmark = pytest.mark.system  # every test starts birdd in a fresh process

DEMO_START = "2024-05-15T06:00:00+00:00"


def error_lines(stderr: str) -> list:
    return [line for line in stderr.splitlines() if line.startswith("birdd: error")]


def thrush_wav(path: Path, rate: int, seconds: float, subtype: str = "PCM_16") -> Path:
    samples = read_mono(recording(THRUSH), rate)[: int(seconds * rate)]
    soundfile.write(str(path), samples, rate, subtype=subtype)
    return path


def test_a_run_ended_by_its_input_leaves_no_resampler_alive_at_exit(birdnet_model, tmp_path):
    """44.1 kHz on stdin (so soxr resamples), ending before --duration: nothing may outlive
    the run; soxr's stream did, held by the --duration timer's thread ('nanobind: leaked')."""
    wav = thrush_wav(tmp_path / "thrush44k.wav", 44100, 6.0)
    db = tmp_path / "db.sqlite"
    for _ in range(3):  # the leak depended on thread scheduling: most runs, not every run
        with wav.open("rb") as stdin:
            result = run_birdd(
                *("run", "--input", "-", "--duration", "60", "--db", str(db)),
                *("--output", "/dev/null"),
                stdin=stdin,
            )
        assert result.returncode == 0, result.stderr
        assert "leaked" not in result.stderr, result.stderr
        assert "complete: 6.0 s of audio" in result.stderr, result.stderr


def test_run_refuses_a_recording_and_names_simulate(tmp_path):
    wav = thrush_wav(tmp_path / "recording.wav", 32000, 1.0)
    db = tmp_path / "db.sqlite"
    result = run_birdd(
        "run", "--input", str(wav), "--duration", "5", "--db", str(db), stdin=subprocess.DEVNULL
    )
    assert result.returncode == 2, result.stderr
    assert error_lines(result.stderr) == [
        f"birdd: error: {wav} is a recording, not a live input: play it through the live "
        f"pipeline with `birdd --simulate {wav} --realtime`"
    ]
    assert not db.exists()


def test_a_run_that_never_got_audio_exits_1_saying_why(birdnet_model, tmp_path):
    """A microphone that is not there for the whole bounded run: waited for, then exit 1
    with the reason the supervisor gave, and the run is marked failed."""
    db = tmp_path / "db.sqlite"
    result = run_birdd("run", "--device", "NoSuchMic", "--duration", "2", "--db", str(db))
    assert result.returncode == 1, result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(
        "birdd: error: no audio from any input: NoSuchMic: no input device 'NoSuchMic' "
    )
    assert result.stderr.splitlines()[-1] == errors[0]
    runs = sqlite3.connect(str(db)).execute("SELECT mode, status FROM runs").fetchall()
    assert runs == [("live", "failed")]


@pytest.mark.parametrize("command", ["simulate", "run"])
def test_a_database_that_is_not_sqlite_is_bad_input(birdnet_model, tmp_path, command):
    notes = tmp_path / "notes.txt"
    notes.write_text("field notes, not a database\n" * 20)
    before = notes.read_bytes()
    source = (
        ["--simulate", str(recording(THRUSH))]
        if command == "simulate"
        else ["run", "--input", "rtsp://127.0.0.1:9/cam", "--duration", "3"]
    )
    result = run_birdd(*source, "--db", str(notes))
    assert result.returncode == 2, result.stderr
    assert error_lines(result.stderr) == [
        f"birdd: error: {notes} exists and is not an SQLite database (left unchanged); "
        "move it away or choose another database path"
    ]
    assert "recording starts" not in result.stderr and "listening to" not in result.stderr
    assert notes.read_bytes() == before


def test_a_species_name_the_model_lacks_is_refused_before_the_recording_starts(
    birdnet_model, tmp_path
):
    result = run_birdd(
        *("--simulate", str(recording(THRUSH)), "--include", "Dodo bird"),
        *("--db", str(tmp_path / "db.sqlite")),
    )
    assert result.returncode == 2 and "Dodo bird" in result.stderr, result.stderr
    assert "recording starts" not in result.stderr


def test_species_without_a_match_says_so_and_exits_1(birdnet_model):
    missing = run_birdd("species", "zzzz")
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr == "birdd: no class matches 'zzzz'; try part of a name or an eBird code\n"
    found = run_birdd("species", "daejun")
    assert found.returncode == 0 and "Junco hyemalis" in found.stdout


@pytest.mark.parametrize(
    "args, usage",
    [
        (["--simulate", "x.wav", "--bogus"], "usage: birdd simulate"),
        (["simulate", "x.wav", "--bogus"], "usage: birdd simulate"),
        (["run", "--bogus"], "usage: birdd run"),
        (["models", "install", "demo", "--bogus"], "usage: birdd models"),
    ],
)
def test_an_unknown_flag_shows_the_usage_of_its_command(args, usage):
    result = run_birdd(*args)
    assert result.returncode == 2
    assert result.stderr.startswith(usage), result.stderr
    assert result.stderr.splitlines()[-1].endswith("unrecognized arguments: --bogus")


def demo_env(data: Path, demo_recording: Path) -> dict:
    """A data folder of the demo's own (it writes its database there), with the installed
    models and the demo recording linked in."""
    (data / "samples").mkdir(parents=True)
    (data / "samples" / demo_recording.name).symlink_to(demo_recording)
    (data / "models").symlink_to(models_dir(), target_is_directory=True)
    return {**os.environ, "BIRDD_DATA_DIR": str(data)}


def test_the_demo_states_its_start_time_and_what_to_run_next(
    birdnet_model, demo_recording, tmp_path
):
    env = demo_env(tmp_path / "data", demo_recording)
    default = run_birdd("demo", env=env)
    assert default.returncode == 0, default.stderr
    assert f"recording starts {DEMO_START}" in default.stderr, default.stderr
    assert "06:00:03.000" in default.stdout  # the Tennessee Warbler at 3-6 s
    assert "birdd --simulate YOUR_RECORDING" in default.stderr.splitlines()[-1]
    chosen = run_birdd("demo", "--start-time", "2024-05-02T04:00:00Z", env=env)
    assert chosen.returncode == 0, chosen.stderr
    assert "recording starts 2024-05-02T04:00:00+00:00" in chosen.stderr
    assert "04:00:03.000" in chosen.stdout
    runs = sqlite3.connect(str(tmp_path / "data" / "birdd.sqlite")).execute(
        "SELECT status FROM runs"
    )
    assert runs.fetchall() == [("complete",), ("complete",)]


def test_nan_and_infinite_samples_are_counted_and_read_as_silence(birdnet_model, tmp_path):
    """A float WAV with NaN in the second window and infinities in the fourth: each window
    is scored as if those samples were 0 (before, the two windows vanished), and one warning
    gives the count."""
    samples = read_mono(recording(THRUSH), 48000)[: 15 * 48000]
    damaged = samples.copy()
    damaged[4 * 48000 : 4 * 48000 + 300] = np.nan
    damaged[10 * 48000 :: 48000] = [np.inf, -np.inf, np.inf, np.inf, -np.inf]
    zeroed = np.where(np.isfinite(damaged), damaged, 0).astype(np.float32)
    runs = []
    for name, audio in (("damaged", damaged), ("zeroed", zeroed)):
        path = tmp_path / f"{name}.wav"
        soundfile.write(str(path), audio, 48000, subtype="FLOAT")
        flags = ("--min-conf", "0.1", "--start-time", "2024-05-02T04:00:00Z")
        result, rows = simulate_rows(path, tmp_path / f"{name}.sqlite", *flags)
        assert result.returncode == 0, result.stderr
        runs.append((result, rows))
    (damaged_run, damaged_rows), (zeroed_run, zeroed_rows) = runs

    def heard(rows: list) -> list:
        return [(r["species"]["code"], r["offset_start"], r["confidence"]) for r in rows]

    assert heard(damaged_rows) == heard(zeroed_rows)
    assert {r["offset_start"] for r in damaged_rows} >= {3.0, 9.0}
    warnings = [line for line in damaged_run.stderr.splitlines() if "NaN" in line]
    assert warnings == [
        f"birdd: {tmp_path / 'damaged.wav'}: 305 NaN or infinite sample(s), the first at "
        "4.000 s, read as silence (a damaged file or a broken converter)"
    ]
    assert "NaN" not in zeroed_run.stderr
