"""TensorRT engine (tensorrt + pycuda): plans built on the device, cached beside the ONNX model.

``engine.model`` may name an ONNX model (or an installed model with one): the engine then uses
the plan cached for this GPU, TensorRT version and precision, building it first when there is
none (minutes; ``birdd engines build`` does it ahead of time). It may also name a ``.plan`` or
``.engine`` file with its sidecar, which must have been built here (see ``plans.py``).

The calls into TensorRT and CUDA live in ``birdd.engines.runtime`` (trt_model.py, trt_build.py:
Python 3.6, nothing from birdd), so the same code runs in-process and in a worker started with a
JetPack's system Python (``engine.python: /usr/bin/python3``, ``TensorRTWorkerEngine``).
tensorrt and pycuda are imported only when this engine is loaded. Not yet run on a GPU: see
docs/models.md.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, Literal, Optional

import numpy as np
from pydantic import Field, model_validator

from birdd.engines.base import EngineConfig
from birdd.engines.errors import EngineError, ModelArtifactError, runtime_errors
from birdd.engines.inprocess import InProcessEngine
from birdd.engines.models.artifact import ModelArtifact, load_artifact, sidecar_path
from birdd.engines.models.modeldir import resolve_model
from birdd.engines.models.plans import (
    DEFAULT_BUILD_BATCH,
    DeviceInfo,
    calibration_cache_path,
    calibration_key,
    calibration_windows,
    check_plan,
    plan_block,
    plan_mismatch,
    plan_path,
    read_plan_block,
    write_plan_sidecar,
)
from birdd.engines.runtime import trt_build, trt_model
from birdd.engines.worker import WorkerEngine, WorkerProcess

log = logging.getLogger(__name__)

BUILD_TIMEOUT_S = 3600.0  # a TensorRT plan takes minutes to build, a TX2 much longer

# Builds a plan: (request for runtime.trt_build.build_plan, calibration windows) → device info.
BuildFunction = Callable[[Dict[str, Any], Optional[np.ndarray]], Dict[str, Any]]


class TensorRTConfig(EngineConfig):
    type: Literal["tensorrt"] = "tensorrt"
    precision: Literal["fp16", "fp32", "int8"] = Field(
        "fp16",
        description="Precision of the plan built from the ONNX model: fp16 (default; half the "
        "memory, fast on every Jetson), fp32, or int8 (needs calibration and a GPU with fast "
        "INT8: Xavier, Orin, desktop; not a TX2 or Nano).",
    )
    calibration: Optional[str] = Field(
        None,
        description="Folder of recordings (wav, flac, ogg, opus, mp3) from the site, cut into "
        "windows to calibrate an int8 plan; needed with precision int8.",
    )
    workspace_mb: int = Field(
        1024, ge=16, le=65536, description="Most GPU scratch memory the builder may use (MiB)."
    )
    device: int = Field(0, ge=0, le=15, description="CUDA device index.")

    @model_validator(mode="after")
    def _int8_needs_calibration(self) -> TensorRTConfig:
        if self.precision == "int8" and not self.calibration:
            raise ValueError(
                "precision int8 needs engine.calibration: a folder of recordings from the site"
            )
        return self


def import_tensorrt() -> Any:
    """(tensorrt, pycuda.driver), or RuntimeMissingError naming what to install."""
    with runtime_errors():
        return trt_model.import_tensorrt()


def device_info(reply: Dict[str, Any]) -> DeviceInfo:
    return DeviceInfo(
        str(reply["device"]), str(reply["compute_capability"]), str(reply["trt_version"])
    )


def _batch(config: TensorRTConfig) -> int:
    return config.batch_size or 1


def ensure_plan(
    artifact: ModelArtifact,
    config: TensorRTConfig,
    here: DeviceInfo,
    build: BuildFunction,
    force: bool = False,
) -> Path:
    """The plan to load for ``artifact``: checked when it is a plan; when it is an ONNX model,
    the cached plan for this GPU, TensorRT version and precision, built first if missing,
    stale or ``force``d."""
    batch = _batch(config)
    if artifact.format == "tensorrt":
        check_plan(
            artifact.path,
            read_plan_block(artifact.path),
            here,
            config.precision,
            batch,
            config.calibration,
        )
        return artifact.path
    if artifact.format != "onnx":
        raise EngineError(
            f"engine.type tensorrt runs an ONNX model or a TensorRT plan, not {artifact.format} "
            f"({artifact.path.name}): convert it with 'birdd models convert NAME --to onnx'"
        )
    target = plan_path(artifact.path, here.name, here.trt_version, config.precision)
    reason = "forced" if force else _cached_plan_problem(target, artifact, here, config)
    if reason is None:
        log.info("using the cached TensorRT plan %s", target)
        return target
    return build_plan(artifact, config, here, target, reason, build)


def _cached_plan_problem(
    target: Path, artifact: ModelArtifact, here: DeviceInfo, config: TensorRTConfig
) -> Optional[str]:
    if not target.is_file() or not sidecar_path(target).is_file():
        return "none is cached"
    try:
        load_artifact(target)
        block = read_plan_block(target)
    except ModelArtifactError as exc:
        return f"the cached one is unusable ({exc})"
    problem = plan_mismatch(block, here, config.precision, _batch(config), artifact.sha256)
    return None if problem is None else f"the cached one cannot be used: {problem}"


def build_plan(
    artifact: ModelArtifact,
    config: TensorRTConfig,
    here: DeviceInfo,
    target: Path,
    reason: str,
    build: BuildFunction,
) -> Path:
    """Build ``target`` from the ONNX ``artifact`` and write its sidecar; the plan appears only
    once complete (written as ``.partial``, then renamed)."""
    max_batch = max(_batch(config), DEFAULT_BUILD_BATCH)
    if not os.access(target.parent, os.W_OK):
        raise EngineError(
            f"cannot write a TensorRT plan into {target.parent} (not writable): build it as a "
            "user who can write there, or copy the ONNX model and its sidecar somewhere writable"
        )
    log.warning(
        "building a TensorRT %s plan of %s for %s (%s); this takes minutes (on a Jetson up to "
        "half an hour) and is done once: it is cached as %s",
        config.precision,
        artifact.path.name,
        here.name,
        reason,
        target,
    )
    windows = _calibration(artifact, config)
    partial = target.with_name(target.name + ".partial")
    request = {
        "onnx": str(artifact.path),
        "out": str(partial),
        "precision": config.precision,
        "max_batch": max_batch,
        "opt_batch": _batch(config),
        "window_samples": artifact.window_samples,
        "workspace_mb": config.workspace_mb,
        "device": config.device,
        "calibration_cache": None,
    }
    if windows is not None:
        cache = calibration_cache_path(target, calibration_key(windows))
        request["calibration_cache"] = str(cache)
    try:
        built_on = device_info(build(request, windows))
        os.replace(partial, target)
    finally:
        if partial.exists():
            partial.unlink()
    write_plan_sidecar(
        target, artifact, plan_block(built_on, config.precision, max_batch, artifact)
    )
    log.info("TensorRT plan written: %s", target)
    return target


def _calibration(artifact: ModelArtifact, config: TensorRTConfig) -> Optional[np.ndarray]:
    if config.precision != "int8":
        return None
    if not config.calibration:
        raise EngineError("an int8 plan needs calibration recordings: --calib DIR")
    windows = calibration_windows(
        Path(config.calibration).expanduser(), artifact.sample_rate, artifact.window_samples
    )
    log.info("INT8 calibration set: %d windows from %s", len(windows), config.calibration)
    return windows


class InProcess:
    """The plan-building calls of ``birdd.engines.runtime`` run in this process."""

    def __init__(self, config: TensorRTConfig) -> None:
        self.config = config
        self.trt, self.cuda = import_tensorrt()

    def info(self) -> DeviceInfo:
        with runtime_errors():
            gpu = trt_model.CudaContext(self.cuda, self.config.device)
            try:
                return device_info(gpu.info(self.trt))
            finally:
                gpu.release()

    def build(self, request: Dict[str, Any], windows: Optional[np.ndarray]) -> Dict[str, Any]:
        with runtime_errors():
            return trt_build.build_plan(request, windows)


def onnx_artifact(model: str) -> ModelArtifact:
    """The ONNX model (a file with its sidecar, or an installed model's) to build a plan from."""
    artifact = load_artifact(resolve_model(model, "onnx"))
    if artifact.format != "onnx":
        raise EngineError(
            f"a TensorRT plan is built from an ONNX model with its sidecar; {artifact.path.name} "
            f"is {artifact.format}: run 'birdd models convert birdnet --to onnx' or give the .onnx"
        )
    return artifact


def build_for_command(config: TensorRTConfig, force: bool = False) -> Path:
    """``birdd engines build``: the plan for this GPU (or the one ``config.python``'s worker
    sees), built when missing, stale or ``force``d. Nothing is written when TensorRT is
    missing: the runtime is checked before anything else."""
    if config.python:
        artifact = onnx_artifact(config.model)
        return TensorRTWorkerEngine(config, artifact, python=config.python).build_plan(force)
    backend = InProcess(config)
    artifact = onnx_artifact(config.model)
    return ensure_plan(artifact, config, backend.info(), backend.build, force=force)


class TensorRTWorkerEngine(WorkerEngine):
    """The TensorRT engine in a worker process: the child reports its GPU and TensorRT and
    builds the plan when the cache has none for them (the cache rules of ``ensure_plan``)."""

    config: TensorRTConfig
    model_formats = ("tensorrt", "onnx")

    def _prepare(self, child: WorkerProcess, force: bool = False) -> None:
        """Find (or have the child build) the plan for the child's GPU and TensorRT, and score
        with it from now on."""
        config = self.config

        def build(request: Dict[str, Any], windows: Optional[np.ndarray]) -> Dict[str, Any]:
            if windows is None:
                return self._ask(child, {"op": "trt_build", **request}, BUILD_TIMEOUT_S)
            saved = Path(request["out"] + ".calibration.npy")
            np.save(saved, windows)
            try:
                header = {"op": "trt_build", "calibration": str(saved), **request}
                return self._ask(child, header, BUILD_TIMEOUT_S)
            finally:
                saved.unlink()

        info = self._ask(child, {"op": "trt_info", "device": config.device}, self.load_timeout_s)
        plan = ensure_plan(self.artifact, config, device_info(info), build, force)
        self.artifact = load_artifact(plan)

    def build_plan(self, force: bool = False) -> Path:
        """Make sure the plan for the child's GPU exists (``force``: build it again), without
        loading it; the path of the plan (``birdd engines build --python``)."""
        child = WorkerProcess(self.python)
        try:
            self._prepare(child, force)
        except (EOFError, TimeoutError, OSError, ValueError) as exc:
            doing = f"building a plan from {self.artifact.path.name}"
            raise self._lost(child, exc, doing) from None
        finally:
            child.stop()
        return self.artifact.path


class TensorRTEngine(InProcessEngine):
    type = "tensorrt"
    config_class = TensorRTConfig
    config: TensorRTConfig
    runtime_name = "TensorRT"
    model_formats = ("tensorrt", "onnx")  # a plan, or an ONNX model to build one from
    worker_class = TensorRTWorkerEngine

    @classmethod
    def probe(cls) -> str:
        trt, cuda = import_tensorrt()
        pycuda = getattr(cuda, "__name__", "pycuda").split(".")[0]
        version = getattr(__import__(pycuda), "VERSION_TEXT", "")
        return f"tensorrt {trt.__version__}, pycuda {version}".strip()

    def load(self) -> None:
        backend = InProcess(self.config)
        plan = ensure_plan(self.artifact, self.config, backend.info(), backend.build)
        self.artifact = load_artifact(plan)
        super().load()

    def open_model(self, request: Dict[str, Any]) -> Any:
        return trt_model.TensorRTModel(request)
