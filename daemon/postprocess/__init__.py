"""Post-processing: model scores → confidences → class filters → detection events."""

from birdd.daemon.postprocess.config import (
    LocationConfig,
    PostprocessConfig,
    default_min_confidence,
)
from birdd.daemon.postprocess.errors import PostprocessError
from birdd.daemon.postprocess.processor import PostProcessor

__all__ = [
    "LocationConfig",
    "PostProcessor",
    "PostprocessConfig",
    "PostprocessError",
    "default_min_confidence",
]
