"""The model artifact contract: an engine file plus a sidecar JSON that describes it.

``training`` writes artifacts, ``daemon`` reads them, and both go through this module. The
sidecar sits beside the model file with the same stem (``model.tflite`` → ``model.json``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

from birdd.engines.errors import ModelArtifactError
from birdd.engines.models.labels import Species

SIDECAR_SCHEMA = "birdd.model/1"
FORMATS = ("tflite", "onnx", "tensorrt")
ACTIVATIONS = ("sigmoid", "none")
KINDS = ("classifier", "location", "head", "gate")
HEAD_MODES = ("append", "replace")
INPUT_DTYPES = ("float32",)  # every engine feeds float32 windows


@dataclass(frozen=True)
class ModelArtifact:
    """A validated model file and what its sidecar says about it."""

    path: Path
    name: str
    version: str
    format: str
    sha256: str
    kind: str
    species: List[Species]
    activation: str
    sample_rate: int = 0
    window_samples: int = 0
    input_name: str = ""
    input_dtype: str = "float32"
    licence: str = ""
    source: str = ""
    outputs: Dict[str, Any] = field(default_factory=dict)
    frontend: Dict[str, Any] = field(default_factory=dict)
    # Suggested per-class thresholds (label → confidence), e.g. from a training report.
    thresholds: Dict[str, float] = field(default_factory=dict)
    # kind "head": a classifier on another model's embeddings (engines/head.py applies it):
    # base_model, embedding_dim, weights (file beside), weights_sha256, mode (append|replace).
    head: Dict[str, Any] = field(default_factory=dict)
    # How a trained model was made: data hash, split, metrics (written by birdd.training).
    training: Dict[str, Any] = field(default_factory=dict)

    @property
    def window_s(self) -> float:
        return self.window_samples / self.sample_rate if self.sample_rate else 0.0

    @property
    def num_classes(self) -> int:
        return len(self.species)

    def identity(self) -> Dict[str, str]:
        """The model block carried by every detection record."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


def sidecar_path(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_sidecar(model_path: Path, meta: Dict[str, Any], species: List[Species]) -> Path:
    """Write the sidecar for ``model_path``; the file hash is computed here, never trusted."""
    body = dict(meta)
    body.update(
        schema=SIDECAR_SCHEMA,
        file=model_path.name,
        sha256=file_sha256(model_path),
        classes=[sp.to_json() for sp in species],
    )
    target = sidecar_path(model_path)
    target.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
    return target


def upgrade_sidecar(side: Path) -> bool:
    """Bring a sidecar written by an older birdd up to date: add ``window_s``, ``input_shape``
    and ``input_dtype`` (from its own rate and window) to a classifier's. Returns whether the
    file changed."""
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False  # not ours to mend: loading it reports the problem
    if not isinstance(meta, dict) or meta.get("schema") != SIDECAR_SCHEMA:
        return False
    rate, window = meta.get("sample_rate"), meta.get("window_samples")
    if meta.get("kind") != "classifier" or not rate or not window:
        return False
    current = {"window_s": window / rate, "input_shape": [-1, window], "input_dtype": "float32"}
    missing = {key: value for key, value in current.items() if key not in meta}
    if not missing:
        return False
    meta.update(missing)
    side.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return True


def load_artifact(model_path: Path | str, verify_hash: bool = True) -> ModelArtifact:
    """Read and check a model file's sidecar; every failure is one line naming the fix."""
    path = Path(model_path).expanduser()
    if path.is_dir():
        raise ModelArtifactError(f"model path {path} is a directory: name the model file inside it")
    if not path.is_file():
        raise ModelArtifactError(
            f"model file {path} not found: run 'birdd models install birdnet' or fix model.path"
        )
    meta = _read_sidecar(path)
    artifact = _artifact_from_meta(path, meta)
    if verify_hash:
        actual = file_sha256(path)
        if actual != artifact.sha256:
            raise ModelArtifactError(
                f"model file {path} does not match its sidecar (sha256 {actual[:12]}… != "
                f"{artifact.sha256[:12]}…): reinstall it with 'birdd models install'"
            )
    return artifact


def _read_sidecar(path: Path) -> Dict[str, Any]:
    side = sidecar_path(path)
    if not side.is_file():
        raise ModelArtifactError(
            f"model {path} has no sidecar {side.name}: every model needs one (see docs/models.md)"
        )
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelArtifactError(
            f"sidecar {side} is not valid JSON ({exc}): reinstall the model"
        ) from None
    if not isinstance(meta, dict) or meta.get("schema") != SIDECAR_SCHEMA:
        raise ModelArtifactError(f"sidecar {side} is not a {SIDECAR_SCHEMA} document")
    return meta


def _choice(
    meta: Dict[str, Any], key: str, allowed: Tuple[str, ...], side: str, default: Any = None
) -> str:
    value = meta.get(key, default)
    if value not in allowed:
        raise ModelArtifactError(f"sidecar {side}: {key}={value!r}, allowed: {', '.join(allowed)}")
    return value


def _check_window(artifact: ModelArtifact, window_s: Any, side: str) -> None:
    """``window_s`` states the window's length a second time, so that a sidecar naming the
    wrong sample rate is caught: the model file itself only knows ``window_samples``."""
    try:
        stated = float(window_s)
    except (TypeError, ValueError):
        raise ModelArtifactError(f"sidecar {side}: window_s={window_s!r} is not a number") from None
    implied = stated * artifact.sample_rate
    if abs(implied - artifact.window_samples) > 1:
        raise ModelArtifactError(
            f"sidecar {side}: window_samples {artifact.window_samples} is not window_s "
            f"{stated:g} s at sample_rate {artifact.sample_rate} Hz ({implied:.0f}): one of "
            "them is wrong; reinstall the model or correct its sidecar"
        )


def _check_input_shape(artifact: ModelArtifact, shape: Any, side: str) -> None:
    """``input_shape`` is [batch, window_samples]; -1 for a batch the engine may choose."""
    wanted = [-1, artifact.window_samples]
    valid = isinstance(shape, list) and len(shape) == 2 and isinstance(shape[0], int)
    if not valid or shape[1] != artifact.window_samples or not (shape[0] == -1 or shape[0] > 0):
        raise ModelArtifactError(
            f"sidecar {side}: input_shape {shape!r} is not [batch, window_samples]: the model "
            f"takes one float32 window per row, e.g. {wanted} (-1: any batch)"
        )


def _check_head(head: Dict[str, Any], side: str) -> None:
    """A head names the model whose embeddings it takes and the weights file beside it."""
    missing = [key for key in ("base_model", "weights", "embedding_dim") if not head.get(key)]
    if missing:
        raise ModelArtifactError(
            f"sidecar {side}: a head needs head.{', head.'.join(missing)}: re-export it with "
            "'birdd train'"
        )
    _choice(head, "mode", HEAD_MODES, side, default="append")


def _artifact_from_meta(path: Path, meta: Dict[str, Any]) -> ModelArtifact:
    side = sidecar_path(path).name
    try:
        species = [Species(**entry) for entry in meta["classes"]]
        kind = _choice(meta, "kind", KINDS, side)
        artifact = ModelArtifact(
            path=path,
            name=str(meta["name"]),
            version=str(meta["version"]),
            format=_choice(meta, "format", FORMATS, side),
            sha256=str(meta["sha256"]),
            kind=kind,
            species=species,
            activation=_choice(meta, "activation", ACTIVATIONS, side),
            sample_rate=int(meta.get("sample_rate", 0)),
            window_samples=int(meta.get("window_samples", 0)),
            input_name=str(meta.get("input_name", "")),
            input_dtype=_choice(meta, "input_dtype", INPUT_DTYPES, side, default="float32"),
            licence=str(meta.get("licence", "")),
            source=str(meta.get("source", "")),
            outputs=dict(meta.get("outputs", {})),
            frontend=dict(meta.get("frontend", {})),
            thresholds={str(k): float(v) for k, v in meta.get("thresholds", {}).items()},
            head=dict(meta.get("head", {})),
            training=dict(meta.get("training", {})),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelArtifactError(f"sidecar {side} is incomplete or malformed ({exc!r})") from None
    if kind == "classifier" and (artifact.sample_rate <= 0 or artifact.window_samples <= 0):
        raise ModelArtifactError(
            f"sidecar {side}: a classifier needs sample_rate and window_samples"
        )
    if kind in ("head", "gate"):  # a gate: a one-output head (bird / no bird)
        _check_head(artifact.head, side)
    if "window_s" in meta:
        _check_window(artifact, meta["window_s"], side)
    if "input_shape" in meta:
        _check_input_shape(artifact, meta["input_shape"], side)
    if not species:
        raise ModelArtifactError(f"sidecar {side} lists no classes")
    _check_thresholds(artifact, side)
    return artifact


def _check_thresholds(artifact: ModelArtifact, side: str) -> None:
    """Each suggested threshold names one of the model's own classes by its label and is a
    confidence in (0, 1]: post-processing applies them per class."""
    labels = {sp.label for sp in artifact.species}
    for label, value in artifact.thresholds.items():
        if label not in labels:
            raise ModelArtifactError(
                f"sidecar {side}: thresholds[{label!r}] is not one of the model's classes: "
                "use the class's label as 'classes' lists it, or remove the key"
            )
        if not 0.0 < value <= 1.0:
            raise ModelArtifactError(
                f"sidecar {side}: thresholds[{label!r}] = {value:g} is not a confidence in "
                "(0, 1]: correct it or remove the key"
            )
