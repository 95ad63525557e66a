"""TFLite engine: ai-edge-litert (LiteRT) by default, tflite-runtime as the fallback.

Resizing an interpreter's input costs 0.3–2.4 s on its first call, so the engine keeps two
interpreters sized once at load: batch 1 for the trickle of live windows and ``batch_size``
for full batches. A partial batch runs window by window on the batch-1 interpreter.
"""

from __future__ import annotations

from typing import Any, Dict, Literal, Optional

import numpy as np
from pydantic import Field

from .base import Engine, EngineConfig
from .errors import EngineError, RuntimeMissingError


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
        self._interpreters: Dict[int, Any] = {}
        self._interpreter_class: Optional[Any] = None

    def load(self) -> None:
        self._interpreter_class = import_interpreter(self.config.runtime)
        for size in sorted({1, self.config.batch_size}):
            self._interpreters[size] = self._make_interpreter(size)

    def _make_interpreter(self, batch: int) -> Any:
        path = str(self.artifact.path)
        try:
            interpreter = self._interpreter_class(model_path=path, num_threads=self.config.threads)
            detail = interpreter.get_input_details()[0]
            if list(detail["shape"][1:]) != [self.artifact.window_samples]:
                raise EngineError(
                    f"model {path} takes input {list(detail['shape'])} but its sidecar says "
                    f"[B, {self.artifact.window_samples}]: the sidecar belongs to another model"
                )
            interpreter.resize_tensor_input(detail["index"], [batch, self.artifact.window_samples])
            interpreter.allocate_tensors()
        except EngineError:
            raise
        except Exception as exc:  # the runtimes raise ValueError/RuntimeError for corrupt files
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise EngineError(f"cannot load TFLite model {path}: {first_line}") from exc
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
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.shape[0] in self._interpreters:
            return self._invoke(self._interpreters[batch.shape[0]], batch, role)
        single = self._interpreters[1]
        return np.concatenate([self._invoke(single, row[None, :], role) for row in batch])

    def _invoke(self, interpreter: Any, batch: np.ndarray, role: str) -> np.ndarray:
        index = self._output_index(interpreter, role)
        if index is None:
            return super().embed(batch)
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], batch)
        interpreter.invoke()
        return interpreter.get_tensor(index).copy()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch, "scores")

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch, "embeddings")

    def close(self) -> None:
        self._interpreters.clear()
