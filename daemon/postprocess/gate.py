"""The bird / no-bird gate: a one-output head on the classifier's embeddings (``birdd train
gate``) that post-processing asks, per window, whether a bird is heard at all.

BirdNET V2.4 calls a cicada, a dog's howl and a humpback whale birds with confidence ≥ 0.5;
the gate, trained on bird recordings against the negatives, says "no bird" in such windows and
post-processing then drops that window's bird classes (non-bird classes are kept). It reads the
embeddings of the same engine call that gave the scores (``Engine.infer``): no second inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from birdd.daemon.postprocess.errors import PostprocessError
from birdd.engines.errors import ModelArtifactError
from birdd.engines.head import apply_head, load_head_weights
from birdd.engines.models.artifact import ModelArtifact, load_artifact

GATE_KIND = "gate"


@dataclass
class GateCounts:
    """What the gate did in a run: windows it called no-bird, bird detections it dropped there
    (window × class hits above threshold)."""

    windows: int = 0
    no_bird_windows: int = 0
    birds_dropped: int = 0


class Gate:
    """A loaded gate: ``bird_probability(embedding)`` for one window's embedding."""

    def __init__(self, model: str, threshold: float) -> None:
        self.threshold = threshold
        self.artifact = _gate_artifact(model)
        try:
            self.weights = load_head_weights(self.artifact)
        except ModelArtifactError as exc:
            raise PostprocessError(f"postprocess.gate.model: {exc}") from None
        if self.weights.uses_prior:
            raise PostprocessError(
                f"postprocess.gate.model: {model} adds the classifier's logits; a gate reads "
                "embeddings only: re-train it with 'birdd train gate'"
            )
        self.embedding_dim = int(self.weights.layers[0][0].shape[0])

    def bird_probability(self, embedding: np.ndarray) -> float:
        row = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
        if row.shape[1] != self.embedding_dim:
            raise PostprocessError(
                f"the gate {self.artifact.path.name} takes {self.embedding_dim}-d embeddings but "
                f"the model gives {row.shape[1]}-d: train the gate on this model"
            )
        logit = float(apply_head(self.weights, row)[0, 0])
        return float(1.0 / (1.0 + np.exp(-np.clip(logit, -60.0, 60.0))))

    def is_bird(self, embedding: np.ndarray) -> bool:
        return self.bird_probability(embedding) >= self.threshold


def _gate_artifact(model: str) -> ModelArtifact:
    path = Path(model).expanduser()
    if not path.is_file():
        raise PostprocessError(
            f"postprocess.gate.model: {model} is not a file: give the gate.onnx that "
            "'birdd train gate' wrote (its gate.json and gate.npz beside it)"
        )
    try:
        artifact = load_artifact(path)
    except ModelArtifactError as exc:
        raise PostprocessError(f"postprocess.gate.model: {exc}") from None
    if artifact.kind != GATE_KIND:
        raise PostprocessError(
            f"postprocess.gate.model: {path.name} is a {artifact.kind}, not a gate: give the "
            "gate.onnx that 'birdd train gate' wrote"
        )
    return artifact
