"""SIGHUP changes the clips' folder, format and pre- and post-roll of a running `birdd run`
for its next clips; a folder it cannot write to is refused and the old one stays (system)."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import pytest
from reload_daemon import PLAY_S, RATE, Daemon, thrush_play, write_config

from birdd.daemon.app.reload import ConfigReload, split_live
from birdd.daemon.clips.stage import check_folder
from birdd.daemon.config import load_config
from birdd.daemon.store.housekeeping import Housekeeping


def test_clips_settings_apply_live_with_a_clip_stage_only() -> None:
    keys = ["clips.dir", "clips.pre_s", "clips.privacy", "clips.enabled", "clips.upload"]
    assert split_live(keys, mqtt_live=False, clips_live=True) == (keys[:3], keys[3:])
    assert split_live(keys, mqtt_live=False) == ([], keys)


PAUSE_S = 6
"""Silence after the first play: the windows past its last event's post-roll, which decide
its clip (the resampler holds back the last samples fed, and so the play's last window)."""


def test_a_refused_clips_folder_keeps_it_and_the_budget_still_applies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The clip stage's part is refused (one line), the housekeeping's budget is not."""
    caplog.set_level(logging.INFO, logger="birdd")
    path, file = tmp_path / "config.yaml", tmp_path / "file"
    file.write_text("")
    path.write_text(f"clips: {{enabled: true, dir: {tmp_path / 'c'}, max_total_mb: 100}}\n")
    reload = ConfigReload(load_config(path), lambda: load_config(path), lambda _: None)
    keeper = Housekeeping.from_config(reload.config)
    reload.rebudget, reload.reclip = keeper.rebudget, lambda new: check_folder(new.clips)
    path.write_text(f"clips: {{enabled: true, dir: {file}, max_total_mb: 50, pre_s: 2}}\n")
    reload.reload()
    assert reload.config.clips.dir == keeper.clips_dir == tmp_path / "c"
    assert reload.config.clips.pre_s == 1.0 and reload.config.clips.max_total_mb == 50
    assert keeper.budget.max_total_bytes == 50_000_000
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith("reload: clips not changed"), errors
    changed = [r.getMessage() for r in caplog.records if "reload: changed" in r.getMessage()]
    assert changed[0].endswith("applied clips.max_total_mb"), changed


def clip_rows(daemon: Daemon, play: int) -> list:
    start = play * (PLAY_S + PAUSE_S)
    return [row for row in daemon.rows() if start <= row["offset_start"] < start + PLAY_S]


@pytest.mark.system
def test_sighup_moves_the_next_clips_and_refuses_a_folder_it_cannot_write(
    birdnet_model: Path, tmp_path: Path
) -> None:
    config, db = tmp_path / "config.yaml", tmp_path / "birdd.db"
    first, second, not_a_folder = tmp_path / "a", tmp_path / "b", tmp_path / "file"
    not_a_folder.write_text("")
    clips = {"enabled": True, "dir": str(first), "pre_s": 1.0, "post_s": 1.0}
    write_config(config, db, 0.4, clips=clips)
    daemon = Daemon(config)
    play = thrush_play()
    daemon.feed(play + bytes(PAUSE_S * RATE * 2))
    daemon.wait_for("the first play's 18 rows", lambda: len(daemon.rows()) >= 18)
    write_config(config, db, 0.4, clips={**clips, "dir": str(not_a_folder)})
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for("the refusal", lambda: any("clips not changed" in e for e in daemon.err))
    moved = {**clips, "dir": str(second), "pre_s": 0.5, "post_s": 0.0, "format": "wav"}
    write_config(config, db, 0.4, clips=moved)
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for("the reload", lambda: any("applied clips.dir" in e for e in daemon.err))
    daemon.feed(play)
    assert daemon.stop(None) == 0, "".join(daemon.err)
    before, after = clip_rows(daemon, 0), clip_rows(daemon, 1)
    assert len(before) == len(after) == 18
    for row in before:
        clip = Path(row["clip"]["path"])
        assert clip.suffix == ".flac" and first in clip.parents
        assert row["clip"]["duration_s"] == (4.0 if row["offset_start"] == 0 else 5.0)
    for row in after:
        clip = Path(row["clip"]["path"])
        assert clip.suffix == ".wav" and second in clip.parents
        assert row["clip"]["duration_s"] == 3.5, row
    refused = [line for line in daemon.err if "clips not changed" in line]
    assert len(refused) == 1 and str(not_a_folder) in refused[0], refused
