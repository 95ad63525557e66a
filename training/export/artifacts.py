"""A trained head → model files with their sidecars, through engines/models/artifact.py.

Two exports of one head:
- ``head.onnx`` + ``head.npz`` + ``head.json`` (``kind: head``, ``mode: append``): the engines
  run the base model (BirdNET, on any engine type) and apply the head to its embeddings (and
  its logits, for the BirdNET prior) in the same pass, so BirdNET's classes and the custom ones
  come out of one inference (engines/head.py applies head.npz; head.onnx is the same head for
  other ONNX consumers);
- ``birdnet_head.onnx`` + ``birdnet_head.json`` (``kind: classifier``): BirdNET and the head as
  one ONNX graph, raw audio in, the custom classes out, that runs on its sidecar alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from birdd.engines.head import HeadWeights, save_head_weights
from birdd.engines.models.artifact import ModelArtifact, file_sha256, write_sidecar
from birdd.engines.models.labels import Species
from birdd.training.export.onnx_head import (
    HEAD_INPUT,
    HEAD_OUTPUT,
    PRIOR_INPUT,
    write_head,
    write_merged,
)

HEAD_FILE = "head.onnx"
WEIGHTS_FILE = "head.npz"
MERGED_FILE = "birdnet_head.onnx"


def common_meta(
    base: ModelArtifact, name: str, thresholds: Dict[str, float], training: Dict
) -> Dict:
    return {
        "name": name,
        "version": str(training.get("data_sha256", "1"))[:12],
        "activation": base.activation,
        "licence": f"{base.licence} (the base model's; the training data's: see the report)",
        "source": "birdd train head",
        "thresholds": thresholds,
        "training": training,
    }


def export_head(
    out: Path,
    weights: HeadWeights,
    species: List[Species],
    base: ModelArtifact,
    base_model: str,
    name: str,
    thresholds: Dict[str, float],
    training: Dict[str, Any],
) -> Path:
    """The head alone, for the engines to apply to ``base_model``'s embeddings."""
    path = write_head(weights, base.num_classes, out / HEAD_FILE)
    save_head_weights(out / WEIGHTS_FILE, weights)
    meta = common_meta(base, name, thresholds, training)
    meta.update(
        kind="head",
        format="onnx",
        input_name=HEAD_INPUT if not weights.uses_prior else f"{HEAD_INPUT}, {PRIOR_INPUT}",
        outputs={"scores": HEAD_OUTPUT},
        head={
            "base_model": base_model,
            "base": base.identity(),
            "embedding_dim": int(weights.layers[0][0].shape[0]),
            "birdnet_prior": weights.uses_prior,
            "weights": WEIGHTS_FILE,
            "weights_sha256": file_sha256(out / WEIGHTS_FILE),
            "mode": "append",
        },
    )
    write_sidecar(path, meta, species)
    return path


def export_merged(
    out: Path,
    weights: HeadWeights,
    species: List[Species],
    base_onnx: ModelArtifact,
    name: str,
    thresholds: Dict[str, float],
    training: Dict[str, Any],
) -> Path:
    """BirdNET (its ONNX conversion) and the head as one model file: raw audio in."""
    embeddings = base_onnx.outputs.get("embeddings")
    if not embeddings or "scores" not in base_onnx.outputs:
        raise ValueError(f"{base_onnx.path} names no scores and embeddings outputs in its sidecar")
    path = write_merged(
        base_onnx.path, base_onnx.outputs, weights, base_onnx.num_classes, out / MERGED_FILE
    )
    meta = common_meta(base_onnx, name, thresholds, training)
    meta.update(
        kind="classifier",
        format="onnx",
        sample_rate=base_onnx.sample_rate,
        window_samples=base_onnx.window_samples,
        window_s=base_onnx.window_s,
        input_name=base_onnx.input_name,
        input_shape=[-1, base_onnx.window_samples],
        input_dtype=base_onnx.input_dtype,
        frontend=base_onnx.frontend,
        outputs={"scores": HEAD_OUTPUT, "embeddings": embeddings},
    )
    write_sidecar(path, meta, species)
    return path
