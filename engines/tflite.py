"""TFLite engine: ai-edge-litert (LiteRT) by default, tflite-runtime as the fallback.

The model code (one interpreter sized once to ``batch_size``, a partial batch zero-padded) is
``birdd.engines.runtime.cpu_models.TFLiteModel``, shared with the worker process.
"""

from __future__ import annotations

from typing import Any, Dict, Literal

from pydantic import Field

from birdd.engines.base import EngineConfig
from birdd.engines.errors import runtime_errors
from birdd.engines.inprocess import InProcessEngine
from birdd.engines.runtime import cpu_models


class TFLiteConfig(EngineConfig):
    type: Literal["tflite"] = "tflite"
    threads: int = Field(2, ge=1, le=64, description="CPU threads for the XNNPACK delegate.")
    runtime: Literal["auto", "litert", "tflite-runtime"] = Field(
        "auto", description="Which TFLite runtime to import: auto tries litert first."
    )


def import_interpreter(runtime: str = "auto") -> Any:
    """The Interpreter class of the first importable runtime ``runtime`` allows, or
    RuntimeMissingError naming what to install."""
    with runtime_errors():
        return cpu_models.import_interpreter(runtime)[0]


class TFLiteEngine(InProcessEngine):
    type = "tflite"
    config_class = TFLiteConfig
    config: TFLiteConfig
    runtime_name = "TFLite"

    @classmethod
    def probe(cls) -> str:
        with runtime_errors():
            return cpu_models.import_interpreter("auto")[1]

    def open_model(self, request: Dict[str, Any]) -> Any:
        return cpu_models.TFLiteModel(request)
