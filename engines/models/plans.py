"""TensorRT plans: where they are cached, what their sidecar says, and when one may be used.

A plan (serialized TensorRT engine) runs only on the GPU model and the TensorRT version that
built it, at the precision it was built for. So a plan is built on the target device from the
ONNX model and cached beside it, keyed by all three::

    BirdNET_GLOBAL_6K_V2.4_Model_FP32_opset17.orin-nano.trt10.3.0.fp16.plan  (+ .json sidecar)

The sidecar is an ordinary ``birdd.model/1`` document (``format: tensorrt``, the plan's own
sha256, the ONNX model's labels, rate and window) with a ``tensorrt`` block naming the GPU, the
TensorRT version, the precision, the largest batch and the ONNX file it came from.

Everything here is pure (paths, JSON, numpy, soundfile): no TensorRT, so it is tested anywhere.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from birdd.engines.errors import EngineError, ModelArtifactError
from birdd.engines.models.artifact import ModelArtifact, sidecar_path, write_sidecar

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "fp32", "int8")
PLAN_SUFFIXES = (".plan", ".engine")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aif", ".aiff")
DEFAULT_BUILD_BATCH = 8
CALIBRATION_WINDOWS = 512


@dataclass(frozen=True)
class DeviceInfo:
    """The GPU and TensorRT a plan is built for or loaded on."""

    name: str
    compute_capability: str
    trt_version: str

    @property
    def slug(self) -> str:
        return device_slug(self.name)


def device_slug(name: str) -> str:
    """A file-name-safe key for a GPU name: 'NVIDIA GeForce RTX 3090' → 'geforce-rtx-3090'."""
    words = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-").split("-")
    slug = "-".join(word for word in words if word and word != "nvidia")
    return slug or "gpu"


def plan_path(onnx_path: Path, device_name: str, trt_version: str, precision: str) -> Path:
    """The cached plan for this ONNX model, GPU, TensorRT version and precision."""
    if precision not in PRECISIONS:
        raise EngineError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    version = re.sub(r"[^0-9A-Za-z.]+", "-", trt_version)
    name = f"{onnx_path.stem}.{device_slug(device_name)}.trt{version}.{precision}.plan"
    return onnx_path.with_name(name)


def calibration_cache_path(target_plan: Path, key: str) -> Path:
    """TensorRT's INT8 calibration table for one calibration set (``key``), kept beside the
    plan so a rebuild from the same recordings skips calibration."""
    return target_plan.with_name(f"{target_plan.stem}.calib-{key}")


def build_command(onnx: Path, precision: str, batch: int, calibration: Optional[str] = None) -> str:
    """The ``birdd engines build`` line that makes a plan usable here."""
    parts = ["birdd engines build", str(onnx), f"--{precision}"]
    if precision == "int8":
        parts += ["--calib", calibration or "DIR"]
    if batch != DEFAULT_BUILD_BATCH:
        parts += ["--batch", str(batch)]
    return " ".join(parts)


def plan_block(
    device: DeviceInfo, precision: str, max_batch: int, source: ModelArtifact
) -> Dict[str, Any]:
    """The sidecar's ``tensorrt`` block for a plan built from ``source`` (an ONNX artifact)."""
    return {
        "device": device.name,
        "compute_capability": device.compute_capability,
        "version": device.trt_version,
        "precision": precision,
        "max_batch": max_batch,
        "source": source.path.name,
        "source_sha256": source.sha256,
        "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def plan_sidecar(source: ModelArtifact, block: Dict[str, Any]) -> Dict[str, Any]:
    """The metadata (before file hash and classes) of a plan built from ``source``."""
    return {
        "name": source.name,
        "version": source.version,
        "format": "tensorrt",
        "kind": source.kind,
        "activation": source.activation,
        "sample_rate": source.sample_rate,
        "window_samples": source.window_samples,
        "window_s": source.window_s,
        "input_name": source.input_name,
        "input_shape": [-1, source.window_samples],
        "input_dtype": source.input_dtype,
        "outputs": dict(source.outputs),
        "frontend": dict(source.frontend),
        "licence": source.licence,
        "source": f"TensorRT {block['version']} {block['precision']} plan for "
        f"{block['device']}, built from {source.path.name}",
        "tensorrt": block,
    }


def write_plan_sidecar(plan: Path, source: ModelArtifact, block: Dict[str, Any]) -> Path:
    return write_sidecar(plan, plan_sidecar(source, block), source.species)


def read_plan_block(plan: Path) -> Dict[str, Any]:
    """The ``tensorrt`` block of a plan's sidecar; one line when it has none."""
    side = sidecar_path(plan)
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelArtifactError(f"plan sidecar {side} is unreadable ({exc})") from None
    block = meta.get("tensorrt") if isinstance(meta, dict) else None
    needed = ("device", "version", "precision", "max_batch", "source")
    if not isinstance(block, dict) or any(key not in block for key in needed):
        raise ModelArtifactError(
            f"sidecar {side.name} has no tensorrt block (device, version, precision, max_batch, "
            "source): build the plan with 'birdd engines build MODEL.onnx'"
        )
    return block


def plan_mismatch(
    block: Dict[str, Any],
    here: DeviceInfo,
    precision: str,
    batch: int,
    source_sha256: Optional[str] = None,
) -> Optional[str]:
    """Why this plan cannot run here as configured, or None when it can."""
    if block["device"] != here.name:
        return f"it was built for GPU {block['device']!r} and this is {here.name!r}"
    if str(block["version"]) != here.trt_version:
        return (
            f"it was built with TensorRT {block['version']} and this is TensorRT {here.trt_version}"
        )
    if block["precision"] != precision:
        return f"it is {block['precision']} and engine.precision is {precision}"
    if int(block["max_batch"]) < batch:
        return f"it takes at most {block['max_batch']} windows per batch and batch_size is {batch}"
    if source_sha256 is not None and block.get("source_sha256") != source_sha256:
        return f"{block['source']} changed since it was built"
    return None


def check_plan(
    plan: Path,
    block: Dict[str, Any],
    here: DeviceInfo,
    precision: str,
    batch: int,
    calibration: Optional[str] = None,
) -> None:
    """Refuse a plan that cannot run here with one line naming the command that fixes it."""
    problem = plan_mismatch(block, here, precision, batch)
    if problem is None:
        return
    command = build_command(
        plan.parent / str(block["source"]),
        precision,
        max(batch, DEFAULT_BUILD_BATCH),
        calibration,
    )
    raise ModelArtifactError(
        f"TensorRT plan {plan.name} cannot be used here: {problem}; plans do not move between "
        f"GPUs, TensorRT versions or precisions: run '{command}' on this device"
    )


# -- INT8 calibration set -----------------------------------------------------------------


def recordings(folder: Path) -> List[Path]:
    """The audio files under ``folder`` (recursively), sorted."""
    if not folder.is_dir():
        raise EngineError(
            f"calibration folder {folder} does not exist: give a folder of recordings"
        )
    found = sorted(
        path
        for path in folder.rglob("*")
        if path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES
    )
    if not found:
        raise EngineError(
            f"calibration folder {folder} has no recordings "
            f"({', '.join(s.lstrip('.') for s in AUDIO_SUFFIXES)}): give a folder of recordings "
            "from the site"
        )
    return found


def _mono_resampled(audio: np.ndarray, rate: int, model_rate: int) -> np.ndarray:
    mono = audio.mean(axis=1) if audio.ndim == 2 else audio
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    if rate == model_rate:
        return mono
    import soxr

    return np.asarray(soxr.resample(mono, rate, model_rate), dtype=np.float32)


def file_windows(path: Path, model_rate: int, window: int, count: int) -> List[np.ndarray]:
    """Up to ``count`` model-rate windows spread evenly over one recording; a recording shorter
    than a window gives one zero-padded window. Only the windows' samples are read."""
    import soundfile

    with soundfile.SoundFile(str(path)) as sound:
        rate, frames = sound.samplerate, sound.frames
        source_window = round(window * rate / model_rate)
        whole = max(frames // source_window, 1) if frames > 0 else 0
        starts = np.linspace(0, max(frames - source_window, 0), min(count, whole)).astype(int)
        windows = []
        for start in sorted(set(starts.tolist())):
            sound.seek(start)
            chunk = sound.read(source_window, dtype="float32", always_2d=True)
            samples = _mono_resampled(chunk, rate, model_rate)[:window]
            padded = np.zeros(window, dtype=np.float32)
            padded[: len(samples)] = samples
            windows.append(padded)
    return windows


def calibration_windows(
    folder: Path, sample_rate: int, window_samples: int, max_windows: int = CALIBRATION_WINDOWS
) -> np.ndarray:
    """A folder of recordings as ``float32[N, window_samples]`` at the model's rate, N ≤
    ``max_windows``, spread evenly over every readable file; unreadable files are skipped with
    a warning, and none readable is one line."""
    files = recordings(folder)
    share = max(1, -(-max_windows // len(files)))
    windows: List[np.ndarray] = []
    for path in files:
        try:
            windows.extend(file_windows(path, sample_rate, window_samples, share))
        except (RuntimeError, OSError, ValueError) as exc:  # soundfile.LibsndfileError
            log.warning("calibration: skipping %s (%s)", path, str(exc).splitlines()[0])
    if not windows:
        raise EngineError(
            f"calibration folder {folder}: none of its {len(files)} files is readable"
        )
    if len(windows) > max_windows:
        keep = np.linspace(0, len(windows) - 1, max_windows).astype(int)
        windows = [windows[i] for i in keep]
    return np.stack(windows)


def calibration_key(windows: np.ndarray) -> str:
    """A short hash of a calibration set, so a cached calibration table matches its data."""
    return hashlib.sha256(np.ascontiguousarray(windows).tobytes()).hexdigest()[:12]
