"""The engine interface every backend implements, and the config fields they share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional, Type

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from birdd.engines.errors import EngineError
from birdd.engines.models.artifact import ModelArtifact


@dataclass(frozen=True)
class InputSpec:
    """What an engine eats: mono float32 windows of ``window_samples`` at ``sample_rate``."""

    sample_rate: int
    window_samples: int
    max_batch: int

    @property
    def window_s(self) -> float:
        return self.window_samples / self.sample_rate


@dataclass(frozen=True)
class Outputs:
    """Both outputs of one run of a model on a batch: ``float32[B, C]`` scores and
    ``float32[B, D]`` embeddings."""

    scores: np.ndarray
    embeddings: np.ndarray


class EngineConfig(BaseModel):
    """Fields every engine has; each backend subclasses this with a ``type`` literal."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        "birdnet",
        description="Model file (with its sidecar JSON beside it) or the name of an installed "
        "model: 'birdnet' is BirdNET V2.4 installed by 'birdd models install birdnet'.",
    )
    batch_size: Optional[int] = Field(
        None,
        ge=1,
        le=256,
        description="Windows scored per engine call (one fixed size; a partial batch is "
        "zero-padded). Unset: 1 live, where windows come one at a time, and 2 in simulate "
        "mode, as fast per window as 8 with far less memory.",
    )

    python: Optional[str] = Field(
        None,
        description="Run the engine in a worker process started with this interpreter (e.g. "
        "/usr/bin/python3 on a Jetson, where the runtime exists only for the system Python); "
        "a worker that dies is restarted and its batch scored again. Unset: in-process.",
    )

    def for_mode(self, live: bool) -> EngineConfig:
        """This config with the mode's default batch size filled in."""
        if self.batch_size is not None:
            return self
        return self.model_copy(update={"batch_size": 1 if live else 2})


class Engine(ABC):
    """A loaded model that turns a batch of audio windows into class scores.

    ``predict`` returns the model's raw output per class (logits when the sidecar says
    ``activation: sigmoid``); post-processing applies the activation and the sensitivity.
    """

    type: ClassVar[str]
    config_class: ClassVar[Type[EngineConfig]]  # Type: the attribute `type` shadows type

    def __init__(self, config: EngineConfig, artifact: ModelArtifact) -> None:
        self.config = config
        self.artifact = artifact

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(
            self.artifact.sample_rate, self.artifact.window_samples, self.config.batch_size or 1
        )

    @classmethod
    @abstractmethod
    def probe(cls) -> str:
        """Name the runtime this engine would use here; raise RuntimeMissingError without it."""

    @abstractmethod
    def load(self) -> None:
        """Import the runtime and prepare the model; raise EngineError on any failure."""

    @abstractmethod
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Score ``float32[B, window_samples]`` with B ≤ max_batch; return ``float32[B, C]``."""

    def infer(self, batch: np.ndarray) -> Outputs:
        """Scores and embeddings of the batch from one run of the model (what a head or a gate
        on the embeddings needs beside the scores); engines whose model has no embeddings
        raise EngineError."""
        raise EngineError(f"model {self.artifact.name} on engine {self.type} has no embeddings")

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """``float32[B, D]`` embeddings (see ``infer``)."""
        return self.infer(batch).embeddings

    def close(self) -> None:
        """Release the runtime's resources."""

    def _check_batch(self, batch: np.ndarray) -> Optional[str]:
        spec = self.input_spec
        if batch.ndim != 2 or batch.shape[1] != spec.window_samples:
            return f"batch shape {batch.shape} != (B, {spec.window_samples})"
        if batch.shape[0] > spec.max_batch:
            return f"batch of {batch.shape[0]} > batch_size {spec.max_batch}"
        return None


def model_request(
    engine_type: str, config: EngineConfig, artifact: ModelArtifact, batch: int
) -> Dict[str, Any]:
    """What a runtime model (``birdd.engines.runtime``) loads from, in this process or sent to
    a worker: the model file, what its sidecar says about it, and the engine's config."""
    return {
        "model": str(artifact.path),
        "engine": engine_type,
        "window_samples": artifact.window_samples,
        "input_dtype": artifact.input_dtype,
        "batch_size": batch,
        "outputs": dict(artifact.outputs),
        "config": config.model_dump(mode="json"),
    }
