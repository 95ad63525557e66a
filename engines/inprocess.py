"""The in-process engines: a model of ``birdd.engines.runtime`` behind the Engine interface.

The runtime package holds the code that loads a model and scores batches, once; the worker
process runs the same code. What is left here is the Engine side: the batch check, the
float32 feed, and runtime failures as one-line EngineErrors.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar, Dict, List, Optional, Sequence

import numpy as np

from birdd.engines.base import Engine, Outputs, model_request
from birdd.engines.errors import EngineError, runtime_errors
from birdd.engines.runtime.errors import first_line


class InProcessEngine(Engine):
    runtime_name: ClassVar[str]  # names the engine in its messages: "TFLite", "ONNX", ...

    def __init__(self, config: Any, artifact: Any) -> None:
        super().__init__(config, artifact)
        self._model: Optional[Any] = None

    @abstractmethod
    def open_model(self, request: Dict[str, Any]) -> Any:
        """The runtime's model for ``request`` (raises the runtime's ModelError)."""

    def load(self) -> None:
        request = model_request(self.type, self.config, self.artifact, self.input_spec.max_batch)
        self.close()
        with runtime_errors():
            self._model = self.open_model(request)

    def _run(self, batch: np.ndarray, roles: Sequence[str]) -> List[np.ndarray]:
        problem = self._check_batch(batch)
        if problem:
            raise EngineError(f"{self.runtime_name} engine: {problem}")
        if self._model is None:
            raise EngineError(f"{self.runtime_name} engine used before load()")
        feed = np.ascontiguousarray(batch, dtype=np.float32)
        try:
            with runtime_errors():
                results = self._model.run(feed, roles)
        except EngineError:
            raise
        except Exception as exc:  # the runtimes raise their own types
            raise EngineError(
                f"{self.runtime_name} failed on {self.artifact.path.name}: {first_line(exc)}"
            ) from exc
        return [np.asarray(result, dtype=np.float32) for result in results]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch, ("scores",))[0]

    def infer(self, batch: np.ndarray) -> Outputs:
        scores, embeddings = self._run(batch, ("scores", "embeddings"))
        return Outputs(scores, embeddings)

    def close(self) -> None:
        if self._model is not None:
            model, self._model = self._model, None
            model.close()
