"""`birdd train head` end to end on real clips with the real BirdNET: train → export → the
exports scored by `birdd --simulate --model`, and the noise test (issue #11: a head trained
on embeddings must not fire on noise, as BirdNET-Analyzer's did)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from birdd_testing import SHARED_AUDIO, SHARED_AUDIO_MISSING, run_birdd, simulate_rows

pytest.importorskip("torch", reason="needs the training extra: pip install 'birdd[training]'")

from birdd.engines.models.artifact import load_artifact
from birdd.training.datasets.split import read_split
from birdd.training.verify import open_engine

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(not (SHARED_AUDIO / "training").is_dir(), reason=SHARED_AUDIO_MISSING),
]
XC = SHARED_AUDIO / "training" / "xc_puerto_rico"
URBAN = SHARED_AUDIO / "training" / "urbansound_negatives"
# Short recordings of two species, three recordists each, so every split has both.
CLIPS = {
    "Melanerpes portoricensis": [
        ("Melanerpes_portoricensis/XC33688.mp3", "Daniel Lane"),
        ("Melanerpes_portoricensis/XC33689.mp3", "Daniel Lane"),
        ("Melanerpes_portoricensis/XC344046.mp3", "Justin Watts"),
        ("Melanerpes_portoricensis/XC9417.mp3", "Allen T. Chartier"),
    ],
    "Melopyrrha portoricensis": [
        ("Melopyrrha_portoricensis/XC178978.mp3", "Tom Auer"),
        ("Melopyrrha_portoricensis/XC737278.mp3", "Justin Watts"),
        ("Melopyrrha_portoricensis/XC805329.mp3", "Alex Lin-Moore"),
    ],
}
NEGATIVE_CLASSES = ("dog_bark", "siren", "street_music", "drilling", "car_horn", "engine_idling")
WOODPECKER = "Melanerpes portoricensis_Puerto Rican Woodpecker"
BULLFINCH = "Melopyrrha portoricensis_Puerto Rican Bullfinch"


def _data(folder: Path) -> Path:
    """A labels.csv of the clips above (absolute paths) and a negatives folder of urban clips
    (six sources of each of six classes; a source's clips stay together)."""
    folder.mkdir(parents=True)
    rows = [
        [str(XC / file), file.split("/")[1][2:-4], species, recordist, "CC BY-NC-SA 4.0", ""]
        for species, clips in CLIPS.items()
        for file, recordist in clips
    ]
    with (folder / "labels.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["file", "xc_id", "scientific", "recordist", "licence", "background"])
        writer.writerows(rows)
    negatives = folder / "negatives"
    negatives.mkdir()
    with (URBAN / "labels.csv").open(newline="") as stream:
        urban = [row for row in csv.DictReader(stream) if row["class"] in NEGATIVE_CLASSES]
    by_class = {cls: [row for row in urban if row["class"] == cls][:6] for cls in NEGATIVE_CLASSES}
    with (negatives / "labels.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["file", "class", "source_id"])
        for rows_of_class in by_class.values():
            for row in rows_of_class:
                writer.writerow([str(URBAN / row["file"]), row["class"], row["source_id"]])
        writer.writerow(["broken.wav", "none", "0"])  # unreadable: skipped and listed
    (negatives / "broken.wav").write_bytes(b"RIFF this is no audio")
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One tiny training run (about a minute on two cores), shared by the tests below."""
    root = tmp_path_factory.mktemp("train")
    data = _data(root / "data")
    out = root / "out"
    result = run_birdd(
        "train", "head", str(data), "--negatives", str(data / "negatives"),
        "--out", str(out), "--cache", str(root / "cache"), "--epochs", "40", "--patience", "15",
        "--threads", "1", timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_run_folder_holds_exports_split_and_report(trained):
    head = load_artifact(trained / "head.onnx")
    merged = load_artifact(trained / "birdnet_head.onnx")
    assert head.kind == "head" and merged.kind == "classifier"
    assert [sp.label for sp in merged.species] == [WOODPECKER, BULLFINCH]
    assert set(merged.thresholds) == {WOODPECKER, BULLFINCH}
    assert all(0.5 <= t < 1 for t in merged.thresholds.values())
    metrics = json.loads((trained / "report" / "metrics.json").read_text())
    assert len(metrics["parity"]) == 2
    assert all(p["max_abs_diff"] <= 1e-3 for p in metrics["parity"]), metrics["parity"]
    report = (trained / "report" / "report.md").read_text()
    assert "XC344046 by Justin Watts" in report  # the recordists credited
    assert "skipped (unreadable): `" in report and "broken.wav" in report
    assert [Path(path).name for path, _ in metrics["skipped"]] == ["broken.wav"]
    for plot in ("pr_curves.png", "training_curves.png", "per_class_ap.png"):
        assert (trained / "report" / plot).stat().st_size > 5000
    split = read_split(trained / "split.csv")
    with (trained / "split.csv").open() as stream:
        groups = {}
        for row in csv.DictReader(stream):
            assert groups.setdefault(row["group"], row["split"]) == row["split"], row["group"]
    assert set(split.values()) == {"train", "val", "test"}


def check_runs_in_simulate(model: Path, tmp_path: Path) -> None:
    """`birdd --simulate --model MODEL` on a clip not in the training data: it runs through
    the model's sidecar alone and reports only the model's two species."""
    clip = XC / "Melanerpes_portoricensis/XC32070.mp3"
    result, rows = simulate_rows(
        clip, tmp_path / "db.sqlite", "--model", str(model), "--min-conf", "0.01"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert rows and {row["species"]["scientific"] for row in rows} <= {
        "Melanerpes portoricensis",
        "Melopyrrha portoricensis",
    }


def test_standalone_model_runs_in_simulate_through_its_sidecar(trained, tmp_path):
    check_runs_in_simulate(trained / "birdnet_head.onnx", tmp_path)


def test_head_appends_to_birdnet_in_one_run(trained, tmp_path):
    """BirdNET's classes keep BirdNET's scores; the head's species get the head's."""
    clip = XC / "Melanerpes_portoricensis/XC32070.mp3"
    args = ("--min-conf", "0.05", "--engine", "tflite")
    _, plain = simulate_rows(clip, tmp_path / "a.sqlite", *args)
    result, headed = simulate_rows(
        clip, tmp_path / "b.sqlite", *args, "--model", str(trained / "head.onnx")
    )
    assert result.returncode == 0, result.stderr[-2000:]

    def scores(rows):
        return {(r["offset_start"], r["species"]["scientific"]): r["confidence"] for r in rows}

    plain_scores, headed_scores = scores(plain), scores(headed)
    trained_species = {"Melanerpes portoricensis", "Melopyrrha portoricensis"}
    others = {key for key in plain_scores if key[1] not in trained_species}
    assert others, "BirdNET reported no other species on this clip at 0.05"
    for key in others:
        assert headed_scores.get(key) == pytest.approx(plain_scores[key], abs=1e-4), key
    assert any(key[1] in trained_species for key in headed_scores)


def _noise_windows(rate: int = 48000, window: int = 144000) -> np.ndarray:
    rng = np.random.default_rng(0)
    white = rng.normal(0, 0.1, window)
    brown = np.cumsum(rng.normal(0, 0.01, window))
    brown = 0.3 * brown / np.abs(brown).max()
    hum = 0.2 * np.sin(2 * np.pi * 50 * np.arange(window) / rate)
    loud = rng.normal(0, 0.7, window).clip(-1, 1)
    return np.stack([np.zeros(window), white, brown, hum, loud]).astype(np.float32)


def _negative_windows() -> np.ndarray:
    from birdd.training.datasets.records import Recording, audio_files
    from birdd.training.features.audio import recording_windows

    files = audio_files(SHARED_AUDIO / "negatives")
    return np.concatenate([recording_windows(Recording(p), 48000, 144000, 144000) for p in files])


def test_head_does_not_fire_on_noise_at_its_thresholds(trained):
    """Pure noise and silence: no positive. The shared negatives (never seen in training):
    no more windows with a positive than BirdNET's own birds at 0.5."""
    artifact = load_artifact(trained / "birdnet_head.onnx")
    thresholds = np.array([artifact.thresholds[sp.label] for sp in artifact.species])
    engine = open_engine("onnx", str(trained / "birdnet_head.onnx"), batch=8)
    birdnet = open_engine("onnx", "birdnet", batch=8)
    try:
        noise = _noise_windows()
        negatives = _negative_windows()

        def probabilities(model, windows):
            parts = [model.predict(windows[i : i + 8]) for i in range(0, len(windows), 8)]
            return 1 / (1 + np.exp(-np.concatenate(parts)))

        assert not (probabilities(engine, noise) >= thresholds).any()
        head_fired = int((probabilities(engine, negatives) >= thresholds).any(axis=1).sum())
        birds = np.array([sp.is_bird for sp in birdnet.artifact.species])
        birdnet_fired = int((probabilities(birdnet, negatives)[:, birds] >= 0.5).any(axis=1).sum())
    finally:
        engine.close()
        birdnet.close()
    assert head_fired <= birdnet_fired, (head_fired, birdnet_fired, len(negatives))
