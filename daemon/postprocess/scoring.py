"""Raw model outputs → confidences in [0, 1]."""

from __future__ import annotations

import numpy as np


def confidences(scores: np.ndarray, activation: str, sensitivity: float) -> np.ndarray:
    """``sigmoid``: 1 / (1 + exp(-sensitivity * logit)), computed as exp(-log(1 + exp(-z)))
    so that no logit overflows; ``none``: the model already outputs confidences."""
    scores = np.asarray(scores, dtype=np.float32)
    if activation == "none":
        return scores
    if activation == "sigmoid":
        return np.exp(-np.logaddexp(np.float32(0.0), -np.float32(sensitivity) * scores))
    raise ValueError(f"unknown output activation {activation!r}")
