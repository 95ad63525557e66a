"""The bird / no-bird gate in post-processing: in a window the gate calls no-bird the bird
classes are dropped and the non-birds kept, both counted; its config's one-line errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydantic
import pytest
from test_postprocess import CHICKADEE, DOG, ROBIN, processor, run, scored

from birdd.daemon.postprocess import PostprocessConfig, PostprocessError
from birdd.engines.head import HeadWeights, save_head_weights
from birdd.engines.models.artifact import write_sidecar
from birdd.engines.models.labels import Species

TOY_WEIGHTS = np.array([10.0, 0.0])


def write_gate(folder: Path, kind: str = "gate", weights: np.ndarray = TOY_WEIGHTS) -> Path:
    """A gate: bird probability sigmoid(e · weights − 5). The default is on 2-d embeddings:
    sigmoid(10·e0 − 5), so e0 = 1 is bird (0.99) and e0 = 0 is no bird (0.007)."""
    head_weights = HeadWeights(
        [(weights.reshape(-1, 1).astype(np.float32), np.array([-5.0], np.float32))],
        np.array([-1]),
        np.zeros(1, np.float32),
    )
    save_head_weights(folder / "gate.npz", head_weights)
    model = folder / "gate.onnx"
    model.write_bytes(b"gate")  # the daemon applies gate.npz; the ONNX file is for others
    head = {
        "base_model": "birdnet",
        "embedding_dim": weights.size,
        "weights": "gate.npz",
        "mode": "replace",
    }
    meta = {"name": "gate", "version": "1", "kind": kind, "format": "onnx", "head": head}
    meta["activation"] = "sigmoid"
    write_sidecar(model, meta, [Species("Aves", "Bird", None, True)])
    return model


BIRD, NO_BIRD = np.array([1.0, 0.0], np.float32), np.array([0.0, 0.0], np.float32)


def with_embedding(window, embedding):
    return dataclasses.replace(window, embedding=embedding)


def test_no_bird_windows_lose_their_birds_and_keep_non_birds(tmp_path):
    proc = processor(gate={"model": str(write_gate(tmp_path))}, non_birds=True)
    assert proc.needs_embeddings
    windows = [
        with_embedding(scored(0, {ROBIN: 0.9, DOG: 0.8}), NO_BIRD),
        with_embedding(scored(300, {CHICKADEE: 0.7}), BIRD),
        with_embedding(scored(600, {ROBIN: 0.6, CHICKADEE: 0.95}), NO_BIRD),
    ]
    found = [d for batch in run(proc, windows) for d in batch]
    heard = sorted((d.species_index, round(d.offset_start)) for d in found)
    assert heard == [(CHICKADEE, 3), (DOG, 0)]
    assert proc.gate_counts is not None
    assert dataclasses.asdict(proc.gate_counts) == {
        "windows": 3,
        "no_bird_windows": 2,
        "birds_dropped": 3,
    }


def test_without_a_gate_nothing_is_dropped_or_counted():
    proc = processor(non_birds=True)
    assert not proc.needs_embeddings and proc.gate_counts is None
    found = [d for batch in run(proc, [scored(0, {ROBIN: 0.9, DOG: 0.8})]) for d in batch]
    assert sorted(d.species_index for d in found) == [ROBIN, DOG]


def test_the_threshold_decides(tmp_path):
    gate = str(write_gate(tmp_path))
    half = np.array([0.5, 0.0], np.float32)  # bird probability 0.5
    for threshold, kept in ((0.5, [ROBIN]), (0.51, [])):
        proc = processor(gate={"model": gate, "threshold": threshold})
        found = run(proc, [with_embedding(scored(0, {ROBIN: 0.9}), half)])
        assert [d.species_index for batch in found for d in batch] == kept


def test_gate_config_errors_are_one_line(tmp_path):
    with pytest.raises(pydantic.ValidationError, match=r"less than or equal to 0\.99"):
        PostprocessConfig(gate={"model": "g.onnx", "threshold": 1.5})
    with pytest.raises(pydantic.ValidationError, match="Field required"):
        PostprocessConfig(gate={"threshold": 0.5})
    with pytest.raises(PostprocessError, match=r"gate\.model: .*missing\.onnx is not a file"):
        processor(gate={"model": str(tmp_path / "missing.onnx")})
    other = tmp_path / "head"
    other.mkdir()
    with pytest.raises(PostprocessError, match="is a head, not a gate"):
        processor(gate={"model": str(write_gate(other, kind="head"))})


def test_a_gate_for_other_embeddings_is_refused(tmp_path):
    proc = processor(gate={"model": str(write_gate(tmp_path))})
    window = with_embedding(scored(0, {ROBIN: 0.9}), np.zeros(1024, np.float32))
    with pytest.raises(PostprocessError, match="takes 2-d embeddings but the model gives 1024-d"):
        proc.process(window)
