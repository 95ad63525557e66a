"""TFLite engine: ai-edge-litert (LiteRT) by default, tflite-runtime as the fallback.

Resizing an interpreter's input costs 0.3–2.4 s on its first call, and every interpreter holds
its own packed weights and activations (BirdNET: about 170 MB at batch 1, 330 MB at batch 8),
so the engine keeps one interpreter, sized once at load to ``batch_size``, and zero-pads a
partial batch.
"""

from __future__ import annotations

from typing import Any, Dict, Literal, Optional

import numpy as np
from pydantic import Field

from birdd.engines.base import Engine, EngineConfig
from birdd.engines.errors import EngineError, RuntimeMissingError, first_line


class TFLiteConfig(EngineConfig):
    type: Literal["tflite"] = "tflite"
    threads: int = Field(2, ge=1, le=64, description="CPU threads for the XNNPACK delegate.")
    runtime: Literal["auto", "litert", "tflite-runtime"] = Field(
        "auto", description="Which TFLite runtime to import: auto tries litert first."
    )


def import_interpreter(runtime: str) -> Any:
    """Return the Interpreter class of the first importable runtime the config allows."""
    attempts = {
        "litert": ("ai_edge_litert.interpreter", "birdd (ai-edge-litert)"),
        "tflite-runtime": ("tflite_runtime.interpreter", "birdd[tflite-runtime]"),
    }
    order = ["litert", "tflite-runtime"] if runtime == "auto" else [runtime]
    for name in order:
        module_name = attempts[name][0]
        try:
            module = __import__(module_name, fromlist=["Interpreter"])
        except ImportError:
            continue
        return module.Interpreter
    wanted = " or ".join(f"pip install '{attempts[name][1]}'" for name in order)
    raise RuntimeMissingError(f"no TFLite runtime is installed: {wanted}")


class TFLiteEngine(Engine):
    type = "tflite"
    config_class = TFLiteConfig
    config: TFLiteConfig

    def __init__(self, config: TFLiteConfig, artifact: Any) -> None:
        super().__init__(config, artifact)
        self._interpreter: Optional[Any] = None
        self._input_index = 0
        self._output_indices: Dict[str, Optional[int]] = {}
        self._input = np.zeros(0, dtype=np.float32)

    @classmethod
    def probe(cls) -> str:
        interpreter = import_interpreter("auto")
        return interpreter.__module__.split(".")[0]

    def load(self) -> None:
        interpreter_class = import_interpreter(self.config.runtime)
        spec = self.input_spec
        interpreter = self._make_interpreter(interpreter_class, spec.max_batch)
        self._input_index = interpreter.get_input_details()[0]["index"]
        self._output_indices = {
            role: self._output_index(interpreter, role) for role in ("scores", "embeddings")
        }
        self._input = np.zeros((spec.max_batch, spec.window_samples), dtype=np.float32)
        self._interpreter = interpreter

    def _make_interpreter(self, interpreter_class: Any, batch: int) -> Any:
        path = str(self.artifact.path)
        try:
            interpreter = interpreter_class(model_path=path, num_threads=self.config.threads)
            detail = interpreter.get_input_details()[0]
            if list(detail["shape"][1:]) != [self.artifact.window_samples]:
                raise EngineError(
                    f"model {path} takes input {detail['shape'].tolist()} but its sidecar says "
                    f"[B, {self.artifact.window_samples}]: the sidecar belongs to another model"
                )
            found = np.dtype(detail["dtype"]).name
            if found != self.artifact.input_dtype:
                raise EngineError(
                    f"model {path} takes {found} input but its sidecar says "
                    f"{self.artifact.input_dtype}: birdd feeds float32 windows, use a model "
                    "with float input"
                )
            interpreter.resize_tensor_input(detail["index"], [batch, self.artifact.window_samples])
            interpreter.allocate_tensors()
        except EngineError:
            raise
        except Exception as exc:  # the runtimes raise ValueError/RuntimeError for corrupt files
            raise EngineError(f"cannot load TFLite model {path}: {first_line(exc)}") from exc
        return interpreter

    def _output_index(self, interpreter: Any, role: str) -> Optional[int]:
        wanted = self.artifact.outputs.get(role)
        details = interpreter.get_output_details()
        if wanted is None:
            return details[0]["index"] if role == "scores" else None
        for detail in details:
            if detail["name"] == wanted:
                return detail["index"]
        raise EngineError(f"model {self.artifact.path} has no output named {wanted!r} ({role})")

    def _run(self, batch: np.ndarray, role: str) -> np.ndarray:
        problem = self._check_batch(batch)
        if problem:
            raise EngineError(f"TFLite engine: {problem}")
        if self._interpreter is None:
            raise EngineError("TFLite engine used before load()")
        index = self._output_indices[role]
        if index is None:
            return super().embed(batch)
        rows = batch.shape[0]
        self._input[:rows] = batch
        self._input[rows:] = 0.0  # a partial batch is zero-padded
        self._interpreter.set_tensor(self._input_index, self._input)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(index)[:rows].copy()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch, "scores")

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch, "embeddings")

    def close(self) -> None:
        self._interpreter = None
