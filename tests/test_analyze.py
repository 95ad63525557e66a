"""``birdd analyze``, fast tier: which files the PATH arguments name, the resume key, and a
file committed whole (its row and detections) or replaced whole by ``--force``."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import List

import pytest

from birdd.daemon.analyze.paths import expand_paths
from birdd.daemon.analyze.resume import analysis_key, file_id
from birdd.daemon.config import load_config
from birdd.daemon.records import Detection, RunInfo
from birdd.daemon.store.sqlite_store import SQLiteStore
from birdd.engines.models.labels import Species


def touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def card(tmp_path: Path) -> Path:
    """An AudioMoth-like card: audio in upper and lower case, a sub-folder, a macOS resource
    fork, a hidden folder, and files that are no audio."""
    root = tmp_path / "card"
    for name in (
        "20240501_050000.WAV",
        "b.flac",
        "sub/20240502_050000.wav",
        "sub/c.mp3",
        "sub/d.OGG",
        "._20240501_050000.WAV",
        ".Trashes/old.wav",
        "CONFIG.TXT",
        "notes.md",
    ):
        touch(root / name)
    return root


def names(files) -> List[str]:
    return [str(item.relative) for item in files]


def test_a_folder_gives_its_audio_recursively_sorted_without_hidden_files(card: Path) -> None:
    assert names(expand_paths([str(card)])) == [
        "20240501_050000.WAV",
        "b.flac",
        "sub/20240502_050000.wav",
        "sub/c.mp3",
        "sub/d.OGG",
    ]
    assert all(item.path.is_absolute() for item in expand_paths([str(card)]))


def test_globs_files_and_lists_in_argument_order_each_file_once(
    card: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listing = touch(tmp_path / "lists" / "todo.txt", "# the second card\n\n../card/b.flac\n")
    monkeypatch.chdir(tmp_path)
    files = expand_paths(["card/sub/*.wav", f"@{listing}", "card/b.flac", str(card / "sub")])
    assert [item.path for item in files] == [
        card / "sub" / "20240502_050000.wav",
        card / "b.flac",
        card / "sub" / "c.mp3",
        card / "sub" / "d.OGG",
    ]
    named = expand_paths([str(card / "CONFIG.TXT")])  # a file named explicitly is taken
    assert names(named) == ["CONFIG.TXT"]
    assert names(expand_paths([str(card / "**" / "*.mp3")])) == ["c.mp3"]


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("missing.wav", "missing.wav: no such file or folder; check the path"),
        ("card/*.opus", "the pattern matches no file"),
        ("@nolist.txt", "cannot read the list"),
        ("empty", "no audio files"),
    ],
)
def test_paths_that_name_no_audio_are_one_line_errors(
    card: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argument: str, message: str
) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as raised:
        expand_paths([argument])
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_same_named_files_from_two_folders_get_distinct_output_names(tmp_path: Path) -> None:
    first = touch(tmp_path / "site1" / "20240501_050000.WAV")
    second = touch(tmp_path / "site2" / "20240501_050000.WAV")
    relatives = [item.relative for item in expand_paths([str(first), str(second)])]
    assert len(set(relatives)) == 2
    assert relatives[0].parts[-2:] == ("site1", "20240501_050000.WAV")


def test_resume_key_follows_file_model_and_detection_settings(tmp_path: Path) -> None:
    path = touch(tmp_path / "a.wav", "one")
    before = file_id(path)
    os.utime(path, ns=(before[2] + 10**9, before[2] + 10**9))
    assert file_id(path) != before  # touched: analysed again
    model = {"name": "BirdNET", "sha256": "abc"}
    base = analysis_key(load_config(None), model)
    assert analysis_key(load_config(None, {"engine.threads": 1, "storage.db": "x"}), model) == base
    assert analysis_key(load_config(None), {**model, "sha256": "def"}) != base
    for key, value in (
        ("postprocess.min_confidence", 0.5),
        ("windows.overlap_s", 1.0),
        ("audio.channels", 0),
        ("postprocess.location", {"lat": 47.0, "lon": 8.0, "week": 20}),
    ):
        changed = analysis_key(load_config(None, {key: value}), model)
        assert changed.settings_sha256 != base.settings_sha256, key


def detection(source: str) -> Detection:
    moment = datetime(2024, 5, 1, 5, tzinfo=timezone.utc)
    return Detection(
        id=os.urandom(8).hex(),
        species=Species("Turdus merula", "Eurasian Blackbird", "eurbla", True),
        species_index=0,
        confidence=0.9,
        offset_start=0.0,
        offset_end=3.0,
        start=moment,
        end=moment,
        source=source,
        channel="mix",
        station="birdd",
        model={"name": "m", "version": "1", "sha256": "abc"},
    )


def test_force_replaces_a_files_earlier_analysis_and_keeps_other_settings(tmp_path: Path) -> None:
    key = analysis_key(load_config(None), {"sha256": "abc"})
    other = analysis_key(load_config(None, {"postprocess.min_confidence": 0.5}), {"sha256": "abc"})
    file = ("/rec/a.wav", 10, 20)
    row = {"status": "done", "reason": None, "clock_origin": "file name", "audio_seconds": 3.0}
    row.update(windows=1, detections=1, finished_at="2024-05-01T05:00:00.000Z")
    with SQLiteStore(tmp_path / "db.sqlite") as store:
        for run_id, used in (("r1", key), ("r2", other), ("r3", key)):
            now = datetime.now(timezone.utc)
            store.begin_run(RunInfo(run_id, "birdd", "analyze", "x", now, "o", {}, "{}"))
            store.add_file(run_id, {**used.row(file), **row}, [detection(file[0])])
        assert store.analyzed(key.model_sha256, key.settings_sha256) == {file}
        assert [f["run_id"] for f in store.files()] == ["r2", "r3"]
        assert sorted(d["id"] for d in store.detections()) == sorted(
            d["id"] for d in store.detections("r2") + store.detections("r3")
        )
        assert len(store.detections()) == 2
