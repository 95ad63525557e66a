"""Errors an engine or a model artifact raises; each message is one line a user can act on."""


class EngineError(RuntimeError):
    """A model or runtime problem that stops an engine from loading or running."""


class BatchFailed(EngineError):
    """One batch could not be scored, but the engine is usable for the next one (its worker
    died on this batch twice, or the runtime refused it); the daemon skips the batch."""


class ModelArtifactError(EngineError):
    """A model file or its sidecar is missing, corrupt, or disagrees with itself or the config."""


class RuntimeMissingError(EngineError):
    """The runtime library an engine needs is not installed."""


def first_line(exc: BaseException) -> str:
    """The first line of a runtime's error message (they span pages), or its repr if empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)
