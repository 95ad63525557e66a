"""The privacy guard: how strongly the model hears people in a window."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from birdd.daemon.postprocess.scoring import confidences
from birdd.engines.models.labels import Species

HUMAN_CLASSES = ("Human vocal", "Human whistle", "Human non-vocal")
"""BirdNET V2.4's classes for people (labels ``Human vocal_Human vocal`` and so on)."""


class ClipsError(ValueError):
    """A clips setting that cannot work (a folder that cannot be written, a model without
    human classes for the speech check); the message names the fix."""


class SpeechGuard:
    """The highest confidence of a model's human classes in a window, computed as
    post-processing computes every confidence (activation and sensitivity)."""

    def __init__(
        self,
        species: Sequence[Species],
        activation: str,
        sensitivity: float,
        threshold: float,
        model: str,
    ) -> None:
        self.indices = np.array(
            [i for i, sp in enumerate(species) if sp.scientific in HUMAN_CLASSES], dtype=np.int64
        )
        if self.indices.size == 0:
            raise ClipsError(
                f"clips.privacy: model {model} has none of the classes {', '.join(HUMAN_CLASSES)}"
                ", so no clip could be checked for speech: use a model that has them (BirdNET) "
                "or set clips.privacy.human_threshold: null to keep clips unchecked"
            )
        self.activation = activation
        self.sensitivity = sensitivity
        self.threshold = threshold

    def level(self, scores: np.ndarray) -> float:
        """The window's highest human-class confidence."""
        human = confidences(scores[self.indices], self.activation, self.sensitivity)
        return float(human.max())

    def hears(self, level: float) -> bool:
        return level >= self.threshold
