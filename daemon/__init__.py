"""birdd daemon: capture → windows → engine → post-processing → sinks."""

__version__ = "0.1.0"
