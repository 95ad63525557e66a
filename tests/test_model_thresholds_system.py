"""A model's own per-class thresholds end to end: BirdNET with a sidecar that carries
``thresholds`` (as ``birdd train`` writes them), run by ``birdd --simulate --model`` on the
thrush recording. A class with a threshold above its best score disappears, one with a
threshold under the default appears, the others keep the default; ``--min-conf`` puts every
class back on one threshold; a sidecar threshold for a class the model lacks is refused."""

from __future__ import annotations

import json
from pathlib import Path

from birdd_testing import THRUSH, recording, run_birdd, simulate_rows

from birdd.engines.models.artifact import sidecar_path

# On the thrush recording at 0.5 (simulate's default) BirdNET reports Red-eyed Vireo (best
# 0.62) and Hooded Warbler (0.61) but not Louisiana Waterthrush (best 0.42).
VIREO = "Vireo olivaceus_Red-eyed Vireo"
WATERTHRUSH = "Parkesia motacilla_Louisiana Waterthrush"
THRESHOLDS = {VIREO: 0.7, WATERTHRUSH: 0.4}


def with_thresholds(birdnet_model: Path, folder: Path, thresholds) -> Path:
    """BirdNET's model file (linked, not copied) beside a copy of its sidecar that carries
    ``thresholds``."""
    folder.mkdir()
    model = folder / birdnet_model.name
    model.symlink_to(birdnet_model)
    meta = json.loads(sidecar_path(birdnet_model).read_text(encoding="utf-8"))
    meta["thresholds"] = thresholds
    sidecar_path(model).write_text(json.dumps(meta), encoding="utf-8")
    return model


def species(tmp_path: Path, db: str, *flags: str) -> set:
    result, rows = simulate_rows(recording(THRUSH), tmp_path / db, *flags)
    assert result.returncode == 0, result.stderr[-2000:]
    return {row["species"]["common"] for row in rows}


def test_the_models_thresholds_decide_per_class(birdnet_model, tmp_path):
    model = with_thresholds(birdnet_model, tmp_path / "model", THRESHOLDS)
    plain = species(tmp_path, "a.sqlite", "--model", str(birdnet_model))
    assert {"Red-eyed Vireo", "Hooded Warbler"} <= plain
    assert "Louisiana Waterthrush" not in plain
    result, rows = simulate_rows(recording(THRUSH), tmp_path / "b.sqlite", "--model", str(model))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "the model's own thresholds for 2 class(es) (0.40-0.70)" in result.stderr
    headed = {row["species"]["common"] for row in rows}
    assert headed == (plain - {"Red-eyed Vireo"}) | {"Louisiana Waterthrush"}
    found = [r["confidence"] for r in rows if r["species"]["common"] == "Louisiana Waterthrush"]
    assert found and all(0.4 <= c < 0.5 for c in found)
    typed = species(tmp_path, "c.sqlite", "--model", str(model), "--min-conf", "0.5")
    assert typed == plain


def test_a_threshold_for_a_class_the_model_lacks_is_one_line(birdnet_model, tmp_path):
    model = with_thresholds(birdnet_model, tmp_path / "model", {"Red-eyed Vireo": 0.7})
    result = run_birdd(
        "--simulate", str(recording(THRUSH)), "--model", str(model),
        "--db", str(tmp_path / "d.sqlite"),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "thresholds" in line]
    assert "thresholds['Red-eyed Vireo'] is not one of the model's classes" in line
