"""A trained head on a base model's embeddings, applied after the base engine, in numpy.

A head artifact (``kind: head``, written by ``birdd train head``) names its base model and a
weights file of dense layers (``x @ W + b``, ReLU between). ``HeadEngine`` wraps the base
engine: for each batch it takes the base model's scores and embeddings and returns, in
``append`` mode, the base model's classes with the head's scores in place of the base's for
the species they share, followed by the head's classes the base lacks (BirdNET's 6,522 and the
custom ones from one pass, each species once), or in ``replace`` mode the head's alone. It
runs on every engine type, so a head trained once serves TFLite on a Pi and ONNX Runtime on a
desktop alike.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, List, Tuple

import numpy as np

from birdd.engines.base import Engine, EngineConfig, InputSpec
from birdd.engines.errors import EngineError, ModelArtifactError
from birdd.engines.models.artifact import ModelArtifact, file_sha256

HEAD_KIND = "head"
Layers = List[Tuple[np.ndarray, np.ndarray]]


def save_head_weights(path: Any, layers: Layers) -> None:
    """Write dense layers as ``W0, b0, W1, b1, …`` in an .npz (what ``load_head_weights``
    reads)."""
    arrays = {}
    for index, (weight, bias) in enumerate(layers):
        arrays[f"W{index}"] = np.asarray(weight, dtype=np.float32)
        arrays[f"b{index}"] = np.asarray(bias, dtype=np.float32)
    with open(path, "wb") as stream:
        np.savez(stream, **arrays)


def load_head_weights(artifact: ModelArtifact) -> Layers:
    """The dense layers of a head artifact, checked against its sidecar."""
    path = artifact.path.parent / str(artifact.head["weights"])
    if not path.is_file():
        raise ModelArtifactError(f"head {artifact.path.name}: weights file {path} not found")
    wanted = artifact.head.get("weights_sha256")
    if wanted and file_sha256(path) != wanted:
        raise ModelArtifactError(
            f"head weights {path} do not match the sidecar's hash: re-export the head"
        )
    with np.load(path) as data:
        count = len([name for name in data.files if name.startswith("W")])
        layers = [(data[f"W{i}"], data[f"b{i}"]) for i in range(count)]
    dims = [layers[0][0].shape[0]] + [w.shape[1] for w, _ in layers] if layers else []
    if not layers or dims[0] != int(artifact.head["embedding_dim"]):
        raise ModelArtifactError(
            f"head {artifact.path.name}: its weights take {dims[:1]} inputs, the sidecar says "
            f"{artifact.head['embedding_dim']}: re-export the head"
        )
    if dims[-1] != artifact.num_classes:
        raise ModelArtifactError(
            f"head {artifact.path.name}: {dims[-1]} outputs for {artifact.num_classes} classes"
        )
    return layers


def apply_head(layers: Layers, embeddings: np.ndarray) -> np.ndarray:
    """Logits of the head for ``float32[B, D]`` embeddings."""
    x = np.asarray(embeddings, dtype=np.float32)
    for index, (weight, bias) in enumerate(layers):
        x = x @ weight + bias
        if index < len(layers) - 1:
            x = np.maximum(x, 0.0)
    return x.astype(np.float32)


def headed_artifact(head: ModelArtifact, base: ModelArtifact) -> ModelArtifact:
    """What post-processing sees: the base's input, the classes the engine returns, and the
    head's identity (its hash names the run's model)."""
    if base.activation != head.activation:
        raise ModelArtifactError(
            f"head {head.path.name} gives {head.activation} scores but its base model "
            f"{base.name} gives {base.activation}: one activation must serve both"
        )
    if head.head.get("mode", "append") == "append":
        known = {sp.label for sp in base.species}
        species = list(base.species) + [sp for sp in head.species if sp.label not in known]
    else:
        species = list(head.species)
    return dataclasses.replace(
        head,
        kind="classifier",
        sample_rate=base.sample_rate,
        window_samples=base.window_samples,
        input_name=base.input_name,
        species=species,
    )


def append_columns(head: ModelArtifact, base: ModelArtifact) -> Tuple[np.ndarray, np.ndarray]:
    """(base columns, head columns) of the species both models have, in head order."""
    where = {sp.label: index for index, sp in enumerate(base.species)}
    pairs = [(where[sp.label], k) for k, sp in enumerate(head.species) if sp.label in where]
    return np.array([b for b, _ in pairs], dtype=int), np.array([k for _, k in pairs], dtype=int)


class HeadEngine(Engine):
    """The base engine, with the head applied to its embeddings after each batch."""

    type = "head"
    config_class = EngineConfig

    def __init__(self, base: Engine, head: ModelArtifact, layers: Layers) -> None:
        super().__init__(base.config, headed_artifact(head, base.artifact))
        self.base = base
        self.layers = layers
        self.append = head.head.get("mode", "append") == "append"
        self._shared_base, self._shared_head = append_columns(head, base.artifact)
        shared = set(self._shared_head.tolist())
        self._extra = np.array([k for k in range(head.num_classes) if k not in shared], dtype=int)

    @classmethod
    def probe(cls) -> str:
        return "numpy"

    @property
    def input_spec(self) -> InputSpec:
        return self.base.input_spec

    def load(self) -> None:
        """The base engine is loaded when the head engine is made."""

    def predict(self, batch: np.ndarray) -> np.ndarray:
        embeddings = self.base.embed(batch)
        if embeddings.shape[1] != self.layers[0][0].shape[0]:
            raise EngineError(
                f"model {self.base.artifact.name} gives {embeddings.shape[1]}-d embeddings; the "
                f"head takes {self.layers[0][0].shape[0]}: train the head on this model"
            )
        logits = apply_head(self.layers, embeddings)
        if not self.append:
            return logits
        scores = self.base.predict(batch).copy()
        scores[:, self._shared_base] = logits[:, self._shared_head]
        return np.concatenate([scores, logits[:, self._extra]], axis=1)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return self.base.embed(batch)

    def close(self) -> None:
        self.base.close()


def create_head_engine(
    config: EngineConfig, head: ModelArtifact, create: Callable[[EngineConfig], Engine]
) -> Engine:
    """Load the head's base model on the configured engine type, then wrap it."""
    layers = load_head_weights(head)
    base = create(config.model_copy(update={"model": str(head.head["base_model"])}))
    try:
        return HeadEngine(base, head, layers)
    except Exception:
        base.close()
        raise
