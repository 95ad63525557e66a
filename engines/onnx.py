"""ONNX Runtime engine: CPU, CUDA or TensorRT execution providers, dynamic batch.

Works with ``onnxruntime`` and ``onnxruntime-gpu``: the config lists providers in order of
preference and the engine keeps those this installation offers, so one config serves a desktop
and a Jetson. A model exported with a dynamic batch dimension runs each batch as it comes (no
padding); a model with a fixed batch is zero-padded to it, like the TFLite engine.
"""

from __future__ import annotations

import logging
from typing import Any, List, Literal, Optional

import numpy as np
from pydantic import Field, field_validator

from birdd.engines.base import Engine, EngineConfig
from birdd.engines.errors import EngineError, RuntimeMissingError, first_line

log = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"


class ONNXConfig(EngineConfig):
    type: Literal["onnx"] = "onnx"
    providers: List[str] = Field(
        default_factory=lambda: [CPU_PROVIDER],
        min_length=1,
        description="ONNX Runtime execution providers in order of preference, e.g. "
        "[TensorrtExecutionProvider, CUDAExecutionProvider, CPUExecutionProvider]; those this "
        "installation lacks are skipped with a log line, and CPU is the last resort.",
    )
    threads: int = Field(2, ge=1, le=64, description="Threads inside one operator (intra-op).")
    inter_op_threads: int = Field(
        1,
        ge=1,
        le=64,
        description="Threads running independent operators at once; above 1 switches ONNX "
        "Runtime to parallel execution (rarely faster for a single-branch CNN).",
    )

    @field_validator("providers")
    @classmethod
    def _provider_names(cls, providers: List[str]) -> List[str]:
        for name in providers:
            if not name.endswith("ExecutionProvider"):
                raise ValueError(
                    f"{name!r} is not an ONNX Runtime provider name: they end in "
                    "ExecutionProvider, e.g. CUDAExecutionProvider"
                )
        return providers


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeMissingError(
            f"ONNX Runtime is not installed ({exc}): pip install 'birdd[onnx]' "
            "(or onnxruntime-gpu for CUDA/TensorRT)"
        ) from exc
    return onnxruntime


def choose_providers(wanted: List[str], available: List[str]) -> List[str]:
    """The wanted providers this installation has, in order; CPU when none of them is here."""
    chosen = [name for name in wanted if name in available]
    for name in wanted:
        if name not in available:
            log.warning(
                "ONNX Runtime provider %s is not available here (available: %s); skipping it",
                name,
                ", ".join(available),
            )
    if not chosen:
        log.warning("none of the configured ONNX Runtime providers is available: using CPU")
        chosen = [CPU_PROVIDER]
    return chosen


class ONNXEngine(Engine):
    type = "onnx"
    config_class = ONNXConfig
    config: ONNXConfig

    def __init__(self, config: ONNXConfig, artifact: Any) -> None:
        super().__init__(config, artifact)
        self._session: Optional[Any] = None
        self._input_name = ""
        self._fixed_batch: Optional[int] = None

    @classmethod
    def probe(cls) -> str:
        ort = import_onnxruntime()
        return f"onnxruntime {ort.__version__}: {', '.join(ort.get_available_providers())}"

    def load(self) -> None:
        ort = import_onnxruntime()
        providers = choose_providers(self.config.providers, ort.get_available_providers())
        path = str(self.artifact.path)
        try:
            session = ort.InferenceSession(
                path, sess_options=self._session_options(ort), providers=providers
            )
        except Exception as exc:  # ONNX Runtime raises its own types for corrupt files
            raise EngineError(f"cannot load ONNX model {path}: {first_line(exc)}") from exc
        self._check_input(session)
        self._check_outputs(session)
        log.info("ONNX Runtime %s runs %s on %s", ort.__version__, path, session.get_providers())
        self._session = session

    def _session_options(self, ort: Any) -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.config.threads
        options.inter_op_num_threads = self.config.inter_op_threads
        if self.config.inter_op_threads > 1:
            options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return options

    def _check_input(self, session: Any) -> None:
        inputs = session.get_inputs()
        path, samples = self.artifact.path, self.artifact.window_samples
        shape = inputs[0].shape if len(inputs) == 1 else []
        fixed_window = len(shape) == 2 and isinstance(shape[1], int)
        wrong_window = len(shape) != 2 or (fixed_window and shape[1] != samples)
        if wrong_window or inputs[0].type != "tensor(float)":
            found = [(i.name, i.shape, i.type) for i in inputs]
            raise EngineError(
                f"model {path} takes {found} but its sidecar says one float [B, {samples}] "
                "input: the sidecar belongs to another model"
            )
        self._input_name = inputs[0].name
        if isinstance(shape[0], int):
            self._fixed_batch = shape[0]
            if self.input_spec.max_batch > shape[0]:
                raise EngineError(
                    f"model {path} has a fixed batch of {shape[0]}: set engine.batch_size "
                    f"to {shape[0]} or less, or export the model with a dynamic batch"
                )

    def _check_outputs(self, session: Any) -> None:
        names = [output.name for output in session.get_outputs()]
        for role, wanted in self.artifact.outputs.items():
            if wanted not in names:
                raise EngineError(
                    f"model {self.artifact.path} has no output named {wanted!r} ({role}); "
                    f"its outputs are {names}"
                )

    def _output_name(self, role: str) -> Optional[str]:
        name = self.artifact.outputs.get(role)
        if name is None and role == "scores" and self._session is not None:
            return self._session.get_outputs()[0].name
        return name

    def _run(self, batch: np.ndarray, role: str) -> np.ndarray:
        problem = self._check_batch(batch)
        if problem:
            raise EngineError(f"ONNX engine: {problem}")
        if self._session is None:
            raise EngineError("ONNX engine used before load()")
        name = self._output_name(role)
        if name is None:
            return super().embed(batch)
        rows = batch.shape[0]
        feed = np.ascontiguousarray(batch, dtype=np.float32)
        if self._fixed_batch is not None and rows != self._fixed_batch:
            feed = np.zeros((self._fixed_batch, batch.shape[1]), dtype=np.float32)
            feed[:rows] = batch
        try:
            result = self._session.run([name], {self._input_name: feed})[0]
        except Exception as exc:
            raise EngineError(
                f"ONNX Runtime failed on {self.artifact.path}: {first_line(exc)}"
            ) from exc
        return np.asarray(result[:rows], dtype=np.float32)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch, "scores")

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch, "embeddings")

    def close(self) -> None:
        self._session = None
