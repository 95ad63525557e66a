"""Errors an engine or a model artifact raises; each message is one line a user can act on."""


class EngineError(RuntimeError):
    """A model or runtime problem that stops an engine from loading or running."""


class ModelArtifactError(EngineError):
    """A model file or its sidecar is missing, corrupt, or disagrees with itself or the config."""


class RuntimeMissingError(EngineError):
    """The runtime library an engine needs is not installed."""
