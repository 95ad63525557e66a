"""A model's own per-class thresholds (the sidecar's ``thresholds``, from ``birdd train``) in
post-processing: which threshold each class gets, the head appended to a base model, the
command line's ``--min-conf``, and the one-line errors for a sidecar whose thresholds are wrong."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from test_postprocess import CHICKADEE, DOG, JUNCO, ROBIN, all_of, processor, run, scored
from test_postprocess import toy_artifact as toy_classifier

from birdd.daemon.app.cli import build_parser
from birdd.daemon.app.settings import overrides_from
from birdd.daemon.config import load_config
from birdd.daemon.postprocess import PostprocessConfig, PostprocessError
from birdd.daemon.postprocess.selection import NEVER_REPORTED, select_classes
from birdd.engines.errors import ModelArtifactError
from birdd.engines.head import headed_artifact
from birdd.engines.models.artifact import load_artifact, sidecar_path, write_sidecar
from birdd.engines.models.labels import Species

ROBIN_LABEL = "Turdus migratorius_American Robin"
JUNCO_LABEL = "Junco hyemalis_Dark-eyed Junco"
WOODPECKER = Species("Melanerpes portoricensis", "Puerto Rican Woodpecker", None, True)


def with_thresholds(thresholds, artifact=None):
    return dataclasses.replace(artifact or toy_classifier(), thresholds=thresholds)


def thresholds_of(artifact, live=False, **settings):
    config = PostprocessConfig(**settings)
    return select_classes(config, artifact.species, live, artifact.thresholds).thresholds.tolist()


def test_a_class_with_a_model_threshold_uses_it_the_others_min_confidence():
    model = with_thresholds({ROBIN_LABEL: 0.9, JUNCO_LABEL: 0.3})
    assert thresholds_of(model, min_confidence=0.5) == pytest.approx(
        [0.9, 0.3, 0.5, NEVER_REPORTED]  # the dog: a non-bird, off by default
    )
    assert thresholds_of(model, live=True) == pytest.approx([0.9, 0.3, 0.8, NEVER_REPORTED])
    window = scored(0, {ROBIN: 0.8, JUNCO: 0.4, CHICKADEE: 0.6})
    detections = all_of(run(processor(artifact=model, min_confidence=0.5), [window]))
    assert sorted(d.species_index for d in detections) == [JUNCO, CHICKADEE]


def test_species_thresholds_win_over_the_models_and_model_thresholds_false_turns_them_off():
    model = with_thresholds({ROBIN_LABEL: 0.9, JUNCO_LABEL: 0.3})
    mine = {"American Robin": 0.6}
    assert thresholds_of(model, min_confidence=0.5, species_thresholds=mine)[:3] == pytest.approx(
        [0.6, 0.3, 0.5]
    )
    off = thresholds_of(model, min_confidence=0.5, model_thresholds=False, species_thresholds=mine)
    assert off[:3] == pytest.approx([0.6, 0.5, 0.5])


def test_class_filters_still_decide_for_classes_with_a_model_threshold():
    model = with_thresholds({ROBIN_LABEL: 0.9, "Dog_Dog": 0.4})
    config = PostprocessConfig(exclude=["amerob"])
    selection = select_classes(config, model.species, False, model.thresholds)
    assert selection.thresholds[[ROBIN, DOG]].tolist() == [NEVER_REPORTED, NEVER_REPORTED]
    assert not selection.from_model.any()
    assert thresholds_of(model, non_birds=True)[DOG] == pytest.approx(0.4)


def test_appended_head_brings_thresholds_for_its_classes_only():
    """A head in append mode: the base model's classes keep min_confidence, the head's classes
    (one the base also has, one it lacks) get the head's thresholds."""
    base = toy_classifier()
    head = dataclasses.replace(
        base,
        kind="head",
        species=[base.species[JUNCO], WOODPECKER],
        thresholds={JUNCO_LABEL: 0.7, WOODPECKER.label: 0.35},
        head={"base_model": "toy", "weights": "head.npz", "embedding_dim": 2, "mode": "append"},
    )
    combined = headed_artifact(head, base)
    assert [sp.label for sp in combined.species][-1] == WOODPECKER.label
    assert thresholds_of(combined, min_confidence=0.5) == pytest.approx(
        [0.5, 0.7, 0.5, NEVER_REPORTED, 0.35]
    )
    window = scored(0, {ROBIN: 0.55, JUNCO: 0.6, 4: 0.4}, classes=5)
    detections = all_of(run(processor(artifact=combined, min_confidence=0.5), [window]))
    assert sorted(d.species.common for d in detections) == [
        "American Robin",
        "Puerto Rican Woodpecker",
    ]


def test_a_threshold_for_a_class_the_model_lacks_is_refused_in_one_line():
    model = with_thresholds({"Turdus merula_Eurasian Blackbird": 0.7})
    with pytest.raises(PostprocessError) as caught:
        processor(artifact=model)
    assert str(caught.value) == (
        "the model's thresholds name 'Turdus merula_Eurasian Blackbird', not one of its "
        "classes: correct the sidecar's thresholds or set postprocess.model_thresholds: false"
    )
    assert processor(artifact=model, model_thresholds=False) is not None


def test_min_conf_on_the_command_line_replaces_the_models_thresholds():
    parser = build_parser()
    typed = overrides_from(parser.parse_args(["simulate", "a.wav", "--min-conf", "0.3"]))
    assert typed["postprocess.model_thresholds"] is False
    config = load_config(None, typed).postprocess
    assert (config.min_confidence, config.model_thresholds) == (0.3, False)
    model = with_thresholds({ROBIN_LABEL: 0.9})
    assert thresholds_of(model, **config.model_dump())[ROBIN] == pytest.approx(0.3)
    untyped = load_config(None, overrides_from(parser.parse_args(["simulate", "a.wav"])))
    assert untyped.postprocess.model_thresholds is True


def write_model(folder: Path, thresholds) -> Path:
    """A toy classifier file with a sidecar carrying ``thresholds``."""
    model = folder / "toy.onnx"
    model.write_bytes(b"toy model")
    artifact = toy_classifier()
    meta = {
        "name": "toy",
        "version": "1",
        "kind": "classifier",
        "format": "onnx",
        "activation": "sigmoid",
        "sample_rate": artifact.sample_rate,
        "window_samples": artifact.window_samples,
        "thresholds": thresholds,
    }
    write_sidecar(model, meta, artifact.species)
    return model


def test_sidecar_thresholds_are_checked_when_the_model_loads(tmp_path):
    good = load_artifact(write_model(tmp_path, {ROBIN_LABEL: 1.0, JUNCO_LABEL: 0.42}))
    assert good.thresholds == {ROBIN_LABEL: 1.0, JUNCO_LABEL: 0.42}
    model = write_model(tmp_path, {"American Robin": 0.7})
    with pytest.raises(ModelArtifactError) as caught:
        load_artifact(model)
    assert str(caught.value) == (
        "sidecar toy.json: thresholds['American Robin'] is not one of the model's classes: use "
        "the class's label as 'classes' lists it, or remove the key"
    )
    for bad in (0.0, 1.5, -0.2, float("nan")):
        model = write_model(tmp_path, {JUNCO_LABEL: bad})
        with pytest.raises(ModelArtifactError, match=r"thresholds\['Junco hyemalis_Dark-eyed "):
            load_artifact(model)
    side = sidecar_path(model)
    meta = json.loads(side.read_text())
    meta["thresholds"] = {JUNCO_LABEL: "high"}
    side.write_text(json.dumps(meta))
    with pytest.raises(ModelArtifactError, match="incomplete or malformed"):
        load_artifact(model)


def test_model_thresholds_are_float32_like_every_threshold():
    selection = select_classes(
        PostprocessConfig(), toy_classifier().species, False, {ROBIN_LABEL: 0.7}
    )
    assert selection.thresholds.dtype == np.float32
    assert selection.from_model.tolist() == [True, False, False, False]
