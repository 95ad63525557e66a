"""A trained head on a base model's embeddings, applied after the base engine, in numpy.

A head artifact (``kind: head``, written by ``birdd train head``) names its base model and a
weights file of dense layers (``x @ W + b``, ReLU between) and, per class, how much of the base
model's own logit for that species to add (see ``HeadWeights``). ``HeadEngine`` wraps the base
engine: for each batch it takes the base model's scores and embeddings and returns, in
``append`` mode, the base model's classes with the head's scores in place of the base's for
the species they share, followed by the head's classes the base lacks (BirdNET's 6,522 and the
custom ones from one pass, each species once), or in ``replace`` mode the head's alone. It
runs on every engine type, so a head trained once serves TFLite on a Pi and ONNX Runtime on a
desktop alike.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from birdd.engines.base import Engine, EngineConfig, InputSpec, Outputs
from birdd.engines.errors import EngineError, ModelArtifactError
from birdd.engines.models.artifact import ModelArtifact, file_sha256

HEAD_KIND = "head"
Layers = List[Tuple[np.ndarray, np.ndarray]]


@dataclass
class HeadWeights:
    """Dense layers ``x @ W + b`` (ReLU between) on the embeddings, plus the base model's own
    logit for the species it shares with the head: ``prior_scale[k] · base[:, prior_column[k]]``
    is added to class k's logit (``prior_column`` -1 and scale 0 where the base lacks it)."""

    layers: Layers
    prior_column: np.ndarray  # int[K]
    prior_scale: np.ndarray  # float32[K]

    @property
    def uses_prior(self) -> bool:
        return bool(np.any(self.prior_scale != 0))


def save_head_weights(path: Any, weights: HeadWeights) -> None:
    """Write ``W0, b0, W1, b1, …, prior_column, prior_scale`` in an .npz."""
    arrays: Dict[str, np.ndarray] = {
        "prior_column": np.asarray(weights.prior_column, dtype=np.int64),
        "prior_scale": np.asarray(weights.prior_scale, dtype=np.float32),
    }
    for index, (weight, bias) in enumerate(weights.layers):
        arrays[f"W{index}"] = np.asarray(weight, dtype=np.float32)
        arrays[f"b{index}"] = np.asarray(bias, dtype=np.float32)
    with open(path, "wb") as stream:
        # numpy's stubs read **arrays as possibly holding allow_pickle: bool
        np.savez(stream, **arrays)  # type: ignore[arg-type]


def _read_weights(path: Path) -> HeadWeights:
    with np.load(path) as data:
        count = len([name for name in data.files if name.startswith("W")])
        layers = [(data[f"W{i}"], data[f"b{i}"]) for i in range(count)]
        classes = layers[-1][0].shape[1] if layers else 0
        column = data["prior_column"] if "prior_column" in data.files else np.full(classes, -1)
        scale = data["prior_scale"] if "prior_scale" in data.files else np.zeros(classes)
    return HeadWeights(layers, column.astype(np.int64), scale.astype(np.float32))


def load_head_weights(artifact: ModelArtifact) -> HeadWeights:
    """The weights of a head artifact, checked against its sidecar."""
    path = artifact.path.parent / str(artifact.head["weights"])
    if not path.is_file():
        raise ModelArtifactError(f"head {artifact.path.name}: weights file {path} not found")
    wanted = artifact.head.get("weights_sha256")
    if wanted and file_sha256(path) != wanted:
        raise ModelArtifactError(
            f"head weights {path} do not match the sidecar's hash: re-export the head"
        )
    try:
        weights = _read_weights(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelArtifactError(f"head weights {path} are unreadable ({exc})") from None
    layers = weights.layers
    if not layers or layers[0][0].shape[0] != int(artifact.head["embedding_dim"]):
        raise ModelArtifactError(
            f"head {artifact.path.name}: its weights do not take the "
            f"{artifact.head['embedding_dim']}-d embeddings its sidecar names: re-export it"
        )
    if layers[-1][0].shape[1] != artifact.num_classes or len(weights.prior_column) != len(
        artifact.species
    ):
        raise ModelArtifactError(
            f"head {artifact.path.name}: its weights do not give its {artifact.num_classes} "
            "classes: re-export it"
        )
    return weights


def apply_head(
    weights: HeadWeights, embeddings: np.ndarray, base_logits: Optional[np.ndarray] = None
) -> np.ndarray:
    """Logits of the head for ``float32[B, D]`` embeddings and the base model's logits."""
    x = np.asarray(embeddings, dtype=np.float32)
    for index, (weight, bias) in enumerate(weights.layers):
        x = x @ weight + bias
        if index < len(weights.layers) - 1:
            x = np.maximum(x, 0.0)
    if weights.uses_prior:
        if base_logits is None:
            raise EngineError("this head adds the base model's logits: pass them")
        x = x + weights.prior_scale * base_logits[:, np.maximum(weights.prior_column, 0)]
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

    def __init__(self, base: Engine, head: ModelArtifact, weights: HeadWeights) -> None:
        super().__init__(base.config, headed_artifact(head, base.artifact))
        self.base = base
        self.weights = weights
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
        return self.infer(batch).scores

    def infer(self, batch: np.ndarray) -> Outputs:
        """The head's scores (appended to the base's) and the base's embeddings, from one run
        of the base model."""
        base = self.base.infer(batch)
        wanted = self.weights.layers[0][0].shape[0]
        if base.embeddings.shape[1] != wanted:
            raise EngineError(
                f"model {self.base.artifact.name} gives {base.embeddings.shape[1]}-d embeddings; "
                f"the head takes {wanted}: train the head on this model"
            )
        logits = apply_head(self.weights, base.embeddings, base.scores)
        if not self.append:
            return Outputs(logits, base.embeddings)
        scores = base.scores.copy()
        scores[:, self._shared_base] = logits[:, self._shared_head]
        return Outputs(np.concatenate([scores, logits[:, self._extra]], axis=1), base.embeddings)

    def close(self) -> None:
        self.base.close()


def create_head_engine(
    config: EngineConfig, head: ModelArtifact, create: Callable[[EngineConfig], Engine]
) -> Engine:
    """Load the head's base model on the configured engine type, then wrap it."""
    weights = load_head_weights(head)
    base = create(config.model_copy(update={"model": str(head.head["base_model"])}))
    try:
        return HeadEngine(base, head, weights)
    except Exception:
        base.close()
        raise
