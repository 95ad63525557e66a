"""The gate recipe's parts without the model: padded crops cut as the pipeline pads a short
file, bird / no-bird targets from labels and the teacher, the operating threshold chosen for a
recall and folded into the exported bias, and the check that counts BirdNET's birds a gate
keeps (with a real gate file read by the daemon's ``Gate``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_gate import write_gate

pytest.importorskip("torch", reason="needs the training extra: pip install 'birdd[training]'")

from birdd.daemon.postprocess.gate import Gate
from birdd.engines.head import HeadWeights, apply_head
from birdd.training.datasets.records import DatasetError, Recording
from birdd.training.features.embeddings import Features
from birdd.training.recipes.gate import operating_threshold, shifted
from birdd.training.recipes.gate_check import count_file
from birdd.training.recipes.gate_data import (
    GateData,
    gate_windows,
    padded_crops,
    unlabelled_recordings,
    window_targets,
)

RATE, WINDOW, HOP = 100, 300, 300  # a 3 s window at 100 Hz keeps the arrays small
AUDIO = Path(__file__).parent / "data" / "audio"  # the repository's own recordings


def test_padded_crops_are_a_piece_of_each_window_at_the_start_of_zeros():
    audio = np.arange(1, 751, dtype=np.float32)  # 7.5 s: windows at 0, 3, 6 s (last 1.5 s)
    data = GateData(crops=2, crop_min_s=0.5, crop_max_s=3.0)
    crops = padded_crops(audio, WINDOW, HOP, RATE, np.random.default_rng(0), data)
    assert crops.shape == (6, WINDOW)
    for index, crop in enumerate(crops):
        start = (index // 2) * HOP
        length = int(np.count_nonzero(crop))
        assert 50 <= length <= min(300, 750 - start)
        assert not crop[length:].any()  # zeros after the piece, as the windower pads
        piece = crop[:length]
        assert piece[0] >= start + 1 and piece[-1] <= min(start + WINDOW, 750)
        np.testing.assert_array_equal(np.diff(piece), 1)  # one contiguous piece


def test_a_short_tail_gives_no_crop_like_the_windower_drops_it():
    audio = np.ones(350, np.float32)  # 3.5 s: the 0.5 s tail is under 1 s, dropped
    crops = padded_crops(audio, WINDOW, HOP, RATE, np.random.default_rng(1), GateData())
    assert len(crops) == 1


def features(top_bird_logits, labelled_logits) -> Features:
    """Two BirdNET classes: 0 a bird (the labelled species), 1 a non-bird."""
    logits = np.stack([labelled_logits, top_bird_logits], axis=1).astype(np.float32)
    return Features(np.zeros((len(logits), 4), np.float32), logits)


BIRDS = np.array([True, False])
LABEL = "Genus species_Name"


def targets(recording: Recording, feats: Features, weak_min: float = 0.5) -> list:
    out = window_targets(feats, recording, [LABEL], [0], BIRDS, GateData(weak_min=weak_min))
    return [None if np.isnan(t) else int(t) for t in out]


def test_targets_from_labels_the_teacher_and_birdnets_top_bird():
    bird_logits = np.array([3.0, -1.0, -5.0, -4.0])  # p 0.95, 0.27, 0.007, 0.018
    feats = features(np.zeros(4), bird_logits)
    labelled = Recording(Path("a.wav"), labels=(LABEL,), group="x")
    # ≥ 0.1 for the label (teacher filter) or ≥ 0.5 for any bird; the rest dropped
    assert targets(labelled, feats) == [1, 1, None, None]
    negative = Recording(Path("n.wav"), group="n")
    assert targets(negative, feats) == [0, 0, 0, 0]  # BirdNET's false bird stays no-bird
    unlabelled = unlabelled_recordings([AUDIO])[0]
    assert targets(unlabelled, feats) == [1, None, None, None]  # BirdNET's top bird ≥ 0.5
    assert targets(unlabelled, feats, weak_min=0.2) == [1, 1, None, None]


def test_unlabelled_folder_errors_are_one_line(tmp_path):
    with pytest.raises(DatasetError, match=r"--unlabelled .* is not a folder of recordings"):
        unlabelled_recordings([tmp_path])


def test_gate_windows_join_windows_and_crops_per_recording():
    bird = Recording(Path("a.wav"), labels=(LABEL,), group="x")
    negative = Recording(Path("n.wav"), group="n")
    windows = {bird.key: features(np.zeros(2), np.array([3.0, -9.0])),
               negative.key: features(np.zeros(3), np.zeros(3))}  # fmt: skip
    crops = {bird.key: features(np.zeros(1), np.array([2.0]))}
    sets = gate_windows([bird, negative], [windows, crops], [LABEL], [0], BIRDS, GateData())
    # the bird's first window and its crop (its second window is dropped), every negative one
    assert sets.targets[:, 0].tolist() == [1, 1, 0, 0, 0]
    assert sets.recording.tolist() == [0, 0, 1, 1, 1]
    assert sets.recording_targets()[:, 0].tolist() == [1, 0]


def test_the_threshold_keeps_the_recall_and_never_exceeds_one_half():
    probability = np.array([0.05, 0.2, 0.3, 0.6, 0.9, 0.95, 0.99, 0.1, 0.7])
    bird = np.array([1, 1, 1, 1, 1, 1, 1, 0, 0], bool)
    assert operating_threshold(probability, bird, 1.0) == pytest.approx(0.05)
    assert operating_threshold(probability, bird, 0.85) == pytest.approx(0.2)  # 1 of 7 missed
    assert operating_threshold(probability[3:7], bird[3:7], 1.0) == 0.5


def test_the_threshold_is_folded_into_the_bias():
    rng = np.random.default_rng(0)
    weights = HeadWeights(
        [(rng.normal(size=(5, 1)).astype(np.float32), np.array([0.3], np.float32))],
        np.array([-1]),
        np.zeros(1, np.float32),
    )
    x = rng.normal(size=(50, 5)).astype(np.float32)
    before = 1 / (1 + np.exp(-apply_head(weights, x)[:, 0]))
    after = 1 / (1 + np.exp(-apply_head(shifted(weights, 0.2), x)[:, 0]))
    np.testing.assert_array_equal(after >= 0.5, before >= 0.2)


def test_check_counts_birdnets_birds_the_gate_keeps(tmp_path):
    gate = Gate(str(write_gate(tmp_path)), 0.5)  # bird where embedding[0] = 1
    logits = np.array([[2.0, 2.0], [2.0, 2.0], [-2.0, 2.0]], np.float32)  # bird, bird, none
    embeddings = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]], np.float32)
    assert count_file(Features(embeddings, logits), BIRDS, [gate], 0.5) == (2, [1])
