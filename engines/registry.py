"""The one place engines are registered: built-ins here, third parties via entry points.

A third-party package registers an ``Engine`` subclass (with ``type`` and ``config_class``)
under the entry-point group ``birdd.engines``.
"""

from __future__ import annotations

import sys
from pathlib import Path, PurePath
from typing import Any, Dict, List, Sequence, Type, Union

from pydantic import BeforeValidator, Field
from typing_extensions import Annotated

from birdd.engines.base import Engine, EngineConfig
from birdd.engines.errors import EngineError, ModelArtifactError
from birdd.engines.head import HEAD_KIND, create_head_engine
from birdd.engines.models.artifact import load_artifact
from birdd.engines.models.modeldir import resolve_model
from birdd.engines.onnx import ONNXEngine
from birdd.engines.tensorrt import TensorRTEngine
from birdd.engines.tflite import TFLiteEngine
from birdd.engines.worker import WorkerEngine

ENTRY_POINT_GROUP = "birdd.engines"
DEFAULT_ENGINE = TFLiteEngine.type
BUILTIN_ENGINES: Dict[str, Type[Engine]] = {
    TFLiteEngine.type: TFLiteEngine,
    ONNXEngine.type: ONNXEngine,
    TensorRTEngine.type: TensorRTEngine,
}
# Model file suffixes that name an engine other than themselves.
SUFFIX_ENGINES = {"plan": TensorRTEngine.type, "engine": TensorRTEngine.type}


def _entry_point_engines() -> Dict[str, Type[Engine]]:
    if sys.version_info >= (3, 10):
        from importlib.metadata import entry_points

        points = entry_points(group=ENTRY_POINT_GROUP)
    else:  # pragma: no cover - Python 3.8/3.9 API
        from importlib.metadata import entry_points

        points = entry_points().get(ENTRY_POINT_GROUP, [])
    found = {}
    for point in points:
        engine = point.load()
        found[engine.type] = engine
    return found


def engine_classes() -> Dict[str, Type[Engine]]:
    engines = dict(_entry_point_engines())
    engines.update(BUILTIN_ENGINES)
    return engines


def engine_config_classes() -> List[Type[EngineConfig]]:
    return [engine.config_class for engine in engine_classes().values()]


def _default_type(section: Any) -> Any:
    """Fill in a missing ``type``: the model file's suffix where it names an engine, else tflite."""
    if isinstance(section, dict) and "type" not in section:
        suffix = PurePath(str(section.get("model", ""))).suffix.lstrip(".")
        suffix = SUFFIX_ENGINES.get(suffix, suffix)
        return {"type": suffix if suffix in engine_classes() else DEFAULT_ENGINE, **section}
    return section


def engine_config_type() -> Any:
    """The type of the config's ``engine`` section: the engines' configs discriminated on
    ``type``, which a section may leave out (a config that only sets ``model``, or ``--model``
    alone on the command line): ``model.onnx`` then means onnx, anything else tflite."""
    union = Union[tuple(engine_config_classes())]  # type: ignore[valid-type]
    return Annotated[union, Field(discriminator="type"), BeforeValidator(_default_type)]


def model_formats(engine_class: Type[Engine]) -> Sequence[str]:
    """The model formats an engine loads, preferred first (tensorrt: a plan, else ONNX)."""
    return getattr(engine_class, "model_formats", (engine_class.type,))


def resolve_any(name_or_path: str, formats: Sequence[str]) -> Path:
    """The first of ``formats`` the model has; the last format's error when it has none."""
    for fmt in formats[:-1]:
        try:
            return resolve_model(name_or_path, fmt)
        except ModelArtifactError:
            continue
    return resolve_model(name_or_path, formats[-1])


def create_engine(config: EngineConfig) -> Engine:
    """Resolve the model, check its artifact, construct and load the configured engine."""
    engine_type = str(getattr(config, "type", None))
    engine_class = engine_classes().get(engine_type)
    if engine_class is None:
        raise EngineError(f"unknown engine type {engine_type!r}: see 'birdd engines'")
    formats = model_formats(engine_class)
    artifact = load_artifact(resolve_any(config.model, formats))
    if artifact.kind == HEAD_KIND:  # a head on another model's embeddings, on any engine
        return create_head_engine(config, artifact, create_engine)
    if artifact.format not in formats:
        raise EngineError(
            f"model {artifact.path.name} is in {artifact.format} format but engine.type is "
            f"{engine_type}: choose engine.type {artifact.format} or another model"
        )
    if config.python:
        worker_class = getattr(engine_class, "worker_class", WorkerEngine)
        engine: Engine = worker_class(config, artifact, python=config.python)
    else:
        engine = engine_class(config, artifact)
    engine.load()
    return engine
