"""ONNX Runtime engine: CPU, CUDA or TensorRT execution providers, dynamic batch.

Works with ``onnxruntime`` and ``onnxruntime-gpu``: the config lists providers in order of
preference and the engine keeps those this installation offers, so one config serves a desktop
and a Jetson. The model code is ``birdd.engines.runtime.cpu_models.ONNXModel``, shared with the
worker process.
"""

from __future__ import annotations

from typing import Any, Dict, List, Literal

from pydantic import Field, field_validator

from birdd.engines.base import EngineConfig
from birdd.engines.errors import runtime_errors
from birdd.engines.inprocess import InProcessEngine
from birdd.engines.runtime import cpu_models


class ONNXConfig(EngineConfig):
    type: Literal["onnx"] = "onnx"
    providers: List[str] = Field(
        default_factory=lambda: [cpu_models.CPU_PROVIDER],
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
    """The onnxruntime module, or RuntimeMissingError naming what to install."""
    with runtime_errors():
        return cpu_models.import_onnxruntime()


class ONNXEngine(InProcessEngine):
    type = "onnx"
    config_class = ONNXConfig
    config: ONNXConfig
    runtime_name = "ONNX"

    @classmethod
    def probe(cls) -> str:
        ort = import_onnxruntime()
        return f"onnxruntime {ort.__version__}: {', '.join(ort.get_available_providers())}"

    def open_model(self, request: Dict[str, Any]) -> Any:
        return cpu_models.ONNXModel(request)
