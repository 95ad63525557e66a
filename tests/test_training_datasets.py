"""Training data: every supported format parsed, labels mapped to BirdNET's, the recordist
split without leaks. Small files written in tmp dirs; no model needed."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile
from birdd_testing import SHARED_AUDIO, SHARED_AUDIO_MISSING

from birdd.engines.models.labels import Species
from birdd.training.datasets.load import build_dataset, read_data, read_negatives
from birdd.training.datasets.records import DatasetError
from birdd.training.datasets.split import (
    assign_groups,
    fold_split,
    read_split,
    recordist_folds,
    split_recordings,
    write_split,
)

BIRDNET = [
    Species("Coereba flaveola", "Bananaquit", "banana", True),
    Species("Todus mexicanus", "Puerto Rican Tody", "purtod1", True),
    Species("Crotophaga ani", "Smooth-billed Ani", "smbani", True),
    Species("Dog", "Dog", None, False),
]
BANANAQUIT = "Coereba flaveola_Bananaquit"
TODY = "Todus mexicanus_Puerto Rican Tody"
ANI = "Crotophaga ani_Smooth-billed Ani"


def tone(path: Path, seconds: float = 1.0, rate: int = 22050) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(str(path), (0.1 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32), rate)
    return path


def write_csv(path: Path, header: list, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_birdnet_analyzer_folders(tmp_path):
    tone(tmp_path / "Coereba flaveola_Bananaquit" / "a.wav")
    tone(tmp_path / "Todus_mexicanus" / "b.wav")
    tone(tmp_path / "Coereba flaveola_Bananaquit,purtod1" / "c.wav")
    tone(tmp_path / "-Crotophaga ani_Smooth-billed Ani" / "d.wav")
    tone(tmp_path / "Noise" / "e.wav")
    tone(tmp_path / "background" / "f.flac")
    dataset = build_dataset([tmp_path], [], BIRDNET)
    assert dataset.labels == [BANANAQUIT, TODY]
    by_name = {rec.path.name: rec for rec in dataset.recordings}
    assert by_name["a.wav"].labels == (BANANAQUIT,)
    assert by_name["b.wav"].labels == (TODY,)  # folder name with _ for the space
    assert set(by_name["c.wav"].labels) == {BANANAQUIT, TODY}  # comma: multi-label
    assert by_name["d.wav"].is_negative and by_name["d.wav"].excluded == (ANI,)
    assert by_name["e.wav"].is_negative and by_name["f.flac"].is_negative


def test_empty_class_folder_is_one_clear_error(tmp_path):
    tone(tmp_path / "Coereba flaveola_Bananaquit" / "a.wav")
    (tmp_path / "Todus mexicanus_Puerto Rican Tody").mkdir()
    with pytest.raises(DatasetError, match=r"holds no audio files.*add recordings"):
        read_data(tmp_path)


def test_birdclef_csv(tmp_path):
    tone(tmp_path / "train_audio" / "banana" / "XC1.ogg")
    tone(tmp_path / "train_audio" / "purtod1" / "XC2.ogg")
    table = write_csv(
        tmp_path / "train_metadata.csv",
        ["primary_label", "secondary_labels", "author", "filename"],
        [
            ["banana", "['purtod1', 'unknown1']", "Ann", "banana/XC1.ogg"],
            ["purtod1", "[]", "Bob", "purtod1/XC2.ogg"],
        ],
    )
    dataset = build_dataset([table], [], BIRDNET)
    first, second = dataset.recordings
    assert first.labels == (BANANAQUIT,) and first.secondary == (TODY,)  # unknown1 dropped
    assert first.group == "Ann" and first.path.is_file()
    assert second.labels == (TODY,) and second.secondary == ()


def test_xeno_canto_labels_csv(tmp_path):
    tone(tmp_path / "Coereba_flaveola" / "XC10.wav")
    write_csv(
        tmp_path / "labels.csv",
        ["file", "xc_id", "scientific", "common", "recordist", "licence", "background"],
        [["Coereba_flaveola/XC10.wav", "10", "Coereba flaveola", "Bananaquit", "Jo", "BY-NC-SA",
          "Todus mexicanus;Gallus gallus"]],
    )  # fmt: skip
    (recording,) = build_dataset([tmp_path], [], BIRDNET).recordings
    assert recording.labels == (BANANAQUIT,)
    assert recording.secondary == ()  # the tody is heard but not a class of this data set
    assert recording.group == "Jo" and recording.credit == "XC10 by Jo (BY-NC-SA)"


def test_negatives_with_source_ids_and_plain_folders(tmp_path):
    tone(tmp_path / "neg" / "dog_bark" / "1-3-0-0.wav")
    tone(tmp_path / "neg" / "dog_bark" / "1-3-0-1.wav")
    write_csv(
        tmp_path / "neg" / "labels.csv",
        ["file", "class", "source_id"],
        [["dog_bark/1-3-0-0.wav", "dog_bark", "1"], ["dog_bark/1-3-0-1.wav", "dog_bark", "1"]],
    )
    tone(tmp_path / "plain" / "rain.wav")
    tabled = read_negatives(tmp_path / "neg")
    assert [rec.group for rec in tabled] == ["source:1", "source:1"]
    assert all(rec.is_negative for rec in read_negatives(tmp_path / "plain"))


def test_raven_and_audacity_segments(tmp_path):
    tone(tmp_path / "dawn.wav", seconds=8)
    (tmp_path / "dawn.Table.1.selections.txt").write_text(
        "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tSpecies\n"
        "1\tSpectrogram 1\t1\t1.0\t2.5\tBananaquit\n"
        "1\tWaveform 1\t1\t1.0\t2.5\tBananaquit\n"
        "2\tSpectrogram 1\t1\t4.0\t6.0\tnoise\n"
    )
    tone(tmp_path / "dusk.wav", seconds=8)
    (tmp_path / "dusk.txt").write_text("0.5\t3.0\tPuerto Rican Tody\n\\\t2000\t8000\n")
    dataset = build_dataset([tmp_path], [], BIRDNET)
    segments = {(rec.path.name, rec.start_s, rec.end_s): rec for rec in dataset.recordings}
    assert segments[("dawn.wav", 1.0, 2.5)].labels == (BANANAQUIT,)
    assert segments[("dawn.wav", 4.0, 6.0)].is_negative
    assert segments[("dusk.wav", 0.5, 3.0)].labels == (TODY,)
    assert len(segments) == 3


def test_a_class_not_in_the_data_is_refused(tmp_path):
    tone(tmp_path / "Coereba flaveola_Bananaquit" / "a.wav")
    with pytest.raises(DatasetError, match=r"Smooth-billed Ani not in the data.*Bananaquit"):
        build_dataset([tmp_path], [], BIRDNET, classes=["Crotophaga ani"])


def test_unknown_table_format_names_the_expected_columns(tmp_path):
    table = write_csv(tmp_path / "x.csv", ["path", "bird"], [["a.wav", "x"]])
    with pytest.raises(DatasetError, match="primary_label"):
        read_data(table)


def _synthetic_recordings(tmp_path, groups=12, per_group=4):
    """``groups`` recordists with ``per_group`` recordings each, of two species."""
    rows = []
    for group in range(groups):
        for index in range(per_group):
            scientific = ["Coereba flaveola", "Todus mexicanus"][(group + index) % 2]
            name = f"{scientific.replace(' ', '_')}/r{group}_{index}.wav"
            tone(tmp_path / name, seconds=0.1)
            rows.append([name, scientific, f"recordist {group}"])
    return write_csv(tmp_path / "labels.csv", ["file", "scientific", "recordist"], rows)


def test_recordist_split_has_no_leak_and_round_trips(tmp_path):
    table = _synthetic_recordings(tmp_path)
    dataset = build_dataset([table], [], BIRDNET)
    split = split_recordings(dataset.recordings, seed=3)
    groups = {name: {rec.group for rec in recs} for name, recs in split.items()}
    assert not groups["train"] & groups["val"]
    assert not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    assert all(split.values())
    write_split(tmp_path / "split.csv", split)
    on_disk = read_split(tmp_path / "split.csv")
    assert on_disk == {rec.key: name for name, recs in split.items() for rec in recs}
    assert assign_groups(dataset.recordings, (0.6, 0.2, 0.2), 3) == assign_groups(
        dataset.recordings, (0.6, 0.2, 0.2), 3
    )


def test_recordist_folds_partition_the_recordists(tmp_path):
    dataset = build_dataset([_synthetic_recordings(tmp_path)], [], BIRDNET)
    folds = recordist_folds(dataset.recordings, 3, seed=1)
    assert sorted(rec.key for fold in folds for rec in fold) == sorted(
        rec.key for rec in dataset.recordings
    )
    assert [len(fold) for fold in folds] == [16, 16, 16]  # ties go to the smaller fold
    groups = [{rec.group for rec in fold} for fold in folds]
    assert all(groups) and not (
        groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2]
    )
    roles = fold_split(folds, 2)
    assert roles["test"] == folds[2] and roles["val"] == folds[0] and roles["train"] == folds[1]
    with pytest.raises(DatasetError, match="at least 3"):
        recordist_folds(dataset.recordings, 2)


@pytest.mark.skipif(not (SHARED_AUDIO / "training").is_dir(), reason=SHARED_AUDIO_MISSING)
def test_shared_puerto_rico_split_keeps_every_recordist_on_one_side():
    data = SHARED_AUDIO / "training"
    dataset = build_dataset([data / "xc_puerto_rico"], [data / "urbansound_negatives"], BIRDNET)
    assert len(dataset.labels) == 13 and len(dataset.recordings) == 290
    split = split_recordings(dataset.recordings, seed=0)
    owner = {}
    for name, recordings in split.items():
        for rec in recordings:
            assert owner.setdefault(rec.group, name) == name, rec.group
    assert len(split["test"]) >= 40 and sum(not rec.is_negative for rec in split["test"]) >= 10
