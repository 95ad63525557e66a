"""Errors an engine or a model artifact raises; each message is one line a user can act on."""

from contextlib import contextmanager
from typing import Iterator

from birdd.engines.runtime.errors import ModelError


class EngineError(RuntimeError):
    """A model or runtime problem that stops an engine from loading or running."""


class BatchFailed(EngineError):
    """One batch could not be scored, but the engine is usable for the next one (its worker
    died on this batch twice, or the runtime refused it); the daemon skips the batch."""


class ModelArtifactError(EngineError):
    """A model file or its sidecar is missing, corrupt, or disagrees with itself or the config."""


class RuntimeMissingError(EngineError):
    """The runtime library an engine needs is not installed."""


def from_reply(kind: str, message: str) -> EngineError:
    """The error for a runtime's one-line failure of ``kind`` (engine | runtime_missing)."""
    return (RuntimeMissingError if kind == "runtime_missing" else EngineError)(message)


@contextmanager
def runtime_errors() -> Iterator[None]:
    """Raise the runtime package's ModelError again as EngineError or RuntimeMissingError."""
    try:
        yield
    except ModelError as exc:
        raise from_reply(exc.kind, str(exc)) from None
