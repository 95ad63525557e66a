"""The one place engines are registered: built-ins here, third parties via entry points.

A third-party package registers an ``Engine`` subclass (with ``type`` and ``config_class``)
under the entry-point group ``birdd.engines``.
"""

from __future__ import annotations

import sys
from pathlib import PurePath
from typing import Any, Dict, List, Type, Union

from pydantic import BeforeValidator, Field
from typing_extensions import Annotated

from .artifact import load_artifact
from .base import Engine, EngineConfig
from .errors import EngineError
from .modeldir import resolve_model
from .onnx import ONNXEngine
from .tflite import TFLiteEngine

ENTRY_POINT_GROUP = "birdd.engines"
DEFAULT_ENGINE = TFLiteEngine.type
BUILTIN_ENGINES: Dict[str, Type[Engine]] = {
    TFLiteEngine.type: TFLiteEngine,
    ONNXEngine.type: ONNXEngine,
}


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
        return {"type": suffix if suffix in engine_classes() else DEFAULT_ENGINE, **section}
    return section


def engine_config_type() -> Any:
    """The type of the config's ``engine`` section: the engines' configs discriminated on
    ``type``, which a section may leave out (a config that only sets ``model``, or ``--model``
    alone on the command line): ``model.onnx`` then means onnx, anything else tflite."""
    union = Union[tuple(engine_config_classes())]  # type: ignore[valid-type]
    return Annotated[union, Field(discriminator="type"), BeforeValidator(_default_type)]


def create_engine(config: EngineConfig) -> Engine:
    """Resolve the model, check its artifact, construct and load the configured engine."""
    engine_type = getattr(config, "type", None)
    engine_class = engine_classes().get(engine_type)
    if engine_class is None:
        raise EngineError(f"unknown engine type {engine_type!r}: see 'birdd engines'")
    artifact = load_artifact(resolve_model(config.model, engine_type))
    if artifact.format != engine_type:
        raise EngineError(
            f"model {artifact.path.name} is in {artifact.format} format but engine.type is "
            f"{engine_type}: choose engine.type {artifact.format} or another model"
        )
    if config.python:
        from .worker import WorkerEngine

        engine: Engine = WorkerEngine(config, artifact, python=config.python)
    else:
        engine = engine_class(config, artifact)
    engine.load()
    return engine
