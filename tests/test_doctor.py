"""``birdd doctor``'s own logic on real inputs: the level classifier on recorded, silent and
clipped sample arrays, the report's lines and exit codes, the state folder and database checks
on real files, the config check, and the flags. The checks against a real broker, model and
sound server are in test_doctor_system.py."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import soundfile
from birdd_testing import THRUSH, recording

from birdd.daemon.app.doctor import audio, engine, system
from birdd.daemon.app.doctor.base import (
    FAIL,
    OK,
    WARN,
    Context,
    exit_code,
    fail,
    json_report,
    ok,
    text_lines,
    warn,
)
from birdd.daemon.app.doctor.cli import main, run_checks
from birdd.daemon.app.doctor.engine import split_fix
from birdd.daemon.config import load_config

RATE = 32000


@pytest.fixture(scope="module")
def thrush() -> np.ndarray:
    """2 s of a real forest recording (peak about -10 dBFS)."""
    data, rate = soundfile.read(str(recording(THRUSH)), dtype="float32")
    return data[: 2 * rate]


def test_a_real_recording_is_heard_at_its_level(thrush):
    level = audio.measure(thrush)
    result = audio.classify("mic", level, 2.0)
    assert result.status == OK, result
    assert -60 < level.rms_dbfs < level.peak_dbfs < -1
    assert f"RMS {level.rms_dbfs:.1f} dBFS" in result.detail


def test_digital_silence_is_a_dead_microphone():
    result = audio.classify("mic", audio.measure(np.zeros(2 * RATE, np.float32)), 2.0)
    assert result.status == FAIL
    assert "digital silence, a dead microphone" in result.detail
    assert "capture volume" in result.fix


def test_a_whisper_of_noise_under_minus_80_dbfs_is_dead_too(thrush):
    faint = thrush * 10 ** (-70 / 20)  # the recording 70 dB down: RMS under -80 dBFS
    level = audio.measure(faint)
    assert level.rms_dbfs < audio.DEAD_DBFS and level.peak_dbfs > -math.inf
    result = audio.classify("mic", level, 2.0)
    assert result.status == FAIL and "no sound, a dead microphone" in result.detail


def test_a_recording_driven_into_full_scale_is_clipping(thrush):
    hot = np.clip(thrush * 40, -1.0, 1.0)  # +32 dB of gain: the loud parts flatten at 1.0
    level = audio.measure(hot)
    assert level.clipped >= audio.CLIPPED_FRACTION
    result = audio.classify("mic", level, 2.0)
    assert result.status == FAIL and "clipping" in result.detail
    assert "gain" in result.fix


def test_a_single_full_scale_click_is_only_a_warning(thrush):
    clicked = thrush.copy()
    clicked[1000] = 1.0
    result = audio.classify("mic", audio.measure(clicked), 2.0)
    assert result.status == WARN and "touches full scale" in result.detail


def test_one_live_channel_of_two_is_heard(thrush):
    stereo = np.stack([np.zeros_like(thrush), thrush], axis=1)
    assert audio.classify("mic", audio.measure(stereo), 2.0).status == OK


def test_lines_align_and_carry_the_fix():
    results = [ok("config", "valid"), fail("model sha256", "differs", "reinstall it")]
    assert text_lines(results) == [
        "ok    config        valid",
        "FAIL  model sha256  differs — reinstall it",
    ]


def test_warnings_exit_0_and_a_failure_exits_1():
    assert exit_code([ok("a", "x"), warn("b", "y", "z")]) == 0
    assert exit_code([ok("a", "x"), fail("b", "y", "z")]) == 1
    body = json.loads(json_report([warn("clock", "not synced", "timedatectl set-ntp true")]))
    assert body == {
        "ok": True,
        "checks": [
            {
                "status": "warn",
                "check": "clock",
                "detail": "not synced",
                "fix": "timedatectl set-ntp true",
            }
        ],
    }


@pytest.mark.parametrize(
    "message, expected",
    [
        (
            "model file /m.tflite not found: run 'birdd models install birdnet'",
            ["model file /m.tflite not found", "run 'birdd models install birdnet'"],
        ),
        ("sidecar m.json is not a birdd.model/1 document", None),
        ("no input device 'usb' (input devices now: none); see `birdd devices`", None),
    ],
)
def test_an_error_line_splits_into_problem_and_fix(message, expected):
    assert split_fix(message, "DEFAULT") == (expected or [message, "DEFAULT"])


def test_free_space_thresholds():
    assert system.free_space_status(150_000_000) == FAIL
    assert system.free_space_status(800_000_000) == WARN
    assert system.free_space_status(5_000_000_000) == OK


def test_a_running_time_daemon_is_found_by_its_process_name():
    # /proc/PID/comm keeps 15 characters: "systemd-timesyn"
    assert system._time_daemon(["bash", "systemd-timesyn"], []).status == OK
    installed = system._time_daemon(["bash"], ["chronyd"])
    assert installed.status == WARN and "chronyd is installed but not running" in installed.detail
    none = system._time_daemon([], [])
    assert none.status == WARN and "apt install chrony" in none.fix


def _state(tmp_path: Path, db: Path) -> list:
    config = load_config(None, {"storage.db": str(db)})
    return system.check_state(Context(config, None))


def test_a_data_folder_under_a_file_cannot_be_made(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    (result,) = _state(tmp_path, tmp_path / "afile" / "data" / "birdd.sqlite")
    assert result.status == FAIL and result.check == "state dir"
    assert f"{tmp_path / 'afile'} is a file" in result.detail
    assert "storage.db" in result.fix
    assert not (tmp_path / "afile").is_dir()


def test_a_missing_data_folder_that_can_be_made_is_not_made(tmp_path):
    folder = tmp_path / "new" / "data"
    state, database = _state(tmp_path, folder / "birdd.sqlite")
    assert (state.status, database.status) == (OK, OK)
    assert "can be created" in state.detail and "does not exist yet" in database.detail
    assert not folder.exists()


def _database(path: Path, rows: int) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, text TEXT)")
        conn.execute("CREATE INDEX t_text ON t (text)")
        conn.executemany(
            "INSERT INTO t (text) VALUES (?)", [(f"row {n}" * 20,) for n in range(rows)]
        )
    conn.close()


def test_a_sound_database_passes_and_a_damaged_one_fails(tmp_path):
    db = tmp_path / "birdd.sqlite"
    _database(db, 3000)
    assert [r.status for r in _state(tmp_path, db)] == [OK, OK]
    size = db.stat().st_size
    with db.open("r+b") as file:  # pages in the middle overwritten, as a failing SD card does
        file.seek(size // 2 // 4096 * 4096)
        file.write(b"\xa5" * 8 * 4096)
    state, database = _state(tmp_path, db)
    assert state.status == OK and database.status == FAIL
    assert "is damaged" in database.detail and "birdd db check" in database.fix


def test_a_config_that_does_not_load_fails_and_only_config_free_checks_run(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("engine:\n  threads: 0\nstation:\n  idd: x\n")
    results = run_checks(config, skip=["runtimes"])
    assert results[0].status == FAIL and results[0].check == "config"
    assert "(and 1 more)" in results[0].detail
    assert f"birdd check-config {config}" in results[0].fix
    assert [r.check for r in results[1:]] == ["gpu", "clock"]


def test_bad_flags_exit_2(capsys):
    with pytest.raises(SystemExit) as raised:
        main(["--skip", "nothing"])
    assert raised.value.code == 2
    assert "invalid choice: 'nothing'" in capsys.readouterr().err


def test_a_jetson_is_named_by_its_l4t_release(tmp_path, monkeypatch):
    release = tmp_path / "nv_tegra_release"
    release.write_text(
        "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, "
        "DATE: Tue Aug  1 19:57:35 UTC 2023\n"
    )
    monkeypatch.setattr(engine, "TEGRA_RELEASE", release)
    assert engine._tegra() == "Jetson (L4T R35.4.1)"
    monkeypatch.setattr(engine, "TEGRA_RELEASE", tmp_path / "absent")
    assert engine._tegra() is None


def test_clips_that_are_on_need_a_writable_folder_and_their_disk_is_checked(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    overrides = {
        "storage.db": str(tmp_path / "data" / "birdd.sqlite"),
        "clips.enabled": True,
        "clips.dir": str(tmp_path / "afile" / "clips"),
    }
    context = Context(load_config(None, overrides), None)
    state = system.check_state(context)
    assert [(r.check, r.status) for r in state] == [
        ("state dir", OK),
        ("database", OK),
        ("clips dir", FAIL),
    ]
    assert "afile is a file" in state[2].detail and "clips.dir" in state[2].fix
    disk = system.check_disk(context)
    assert [r.detail.split(" at ")[1] for r in disk] == [
        str(tmp_path / "data"),
        str(tmp_path / "afile" / "clips"),
    ]
