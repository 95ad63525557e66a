"""`birdd train gate` → `birdd --simulate --gate` end to end, on real clips with the real
BirdNET (the data of the head's end-to-end test): the gate keeps BirdNET's birds in a bird
recording it was not trained on and drops the false birds BirdNET hears in a dog's howl."""

from __future__ import annotations

from pathlib import Path

import pytest
from birdd_testing import SHARED_AUDIO, SHARED_AUDIO_MISSING, run_birdd, simulate_rows

pytest.importorskip("torch", reason="needs the training extra: pip install 'birdd[training]'")

from test_training_system import XC, _data

from birdd.engines.models.artifact import load_artifact

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(not (SHARED_AUDIO / "training").is_dir(), reason=SHARED_AUDIO_MISSING),
]
DOG_HOWL = SHARED_AUDIO / "negatives" / "dog_howl.ogg"  # BirdNET: 3 birds >= 0.5, not trained on
BIRD_CLIP = XC / "Melanerpes_portoricensis/XC32070.mp3"  # not in the training data


@pytest.fixture(scope="module")
def gate(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gate")
    data = _data(root / "data")
    out = root / "out"
    result = run_birdd(
        "train", "gate", str(data), "--negatives", str(data / "negatives"),
        "--out", str(out), "--cache", str(root / "cache"), "--epochs", "40", "--patience", "15",
        "--threads", "1", timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "gate.onnx"


def birds(path: Path, db: Path, *flags: str):
    result, rows = simulate_rows(path, db, "--min-conf", "0.5", *flags)
    assert result.returncode == 0, result.stderr[-2000:]
    return result, [(r["offset_start"], r["species"]["scientific"]) for r in rows if r["is_bird"]]


def test_a_trained_gate_drops_false_birds_and_keeps_real_ones(gate, tmp_path):
    artifact = load_artifact(gate)
    assert artifact.kind == "gate" and [sp.common for sp in artifact.species] == ["Bird"]
    assert artifact.training["recipe"] == "gate"
    _, alone = birds(DOG_HOWL, tmp_path / "a.sqlite")
    result, gated = birds(DOG_HOWL, tmp_path / "b.sqlite", "--gate", str(gate))
    assert alone and not gated, (alone, gated)
    assert "the gate called" in result.stderr and f"dropped {len(alone)} bird" in result.stderr
    _, bird_alone = birds(BIRD_CLIP, tmp_path / "c.sqlite")
    _, bird_gated = birds(BIRD_CLIP, tmp_path / "d.sqlite", "--gate", str(gate))
    assert bird_alone and bird_gated == bird_alone


def test_a_classifier_is_refused_as_a_gate_in_one_line(gate, tmp_path):
    result = run_birdd(
        "--simulate", str(BIRD_CLIP), "--gate", str(gate.with_name("gate.json")),
        "--db", str(tmp_path / "e.sqlite"),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "postprocess.gate.model" in result.stderr
