"""Post-processing: model scores → confidences → class filters → detection events."""

from .config import LocationConfig, PostprocessConfig, default_min_confidence
from .errors import PostprocessError
from .processor import PostProcessor

__all__ = [
    "LocationConfig",
    "PostProcessor",
    "PostprocessConfig",
    "PostprocessError",
    "default_min_confidence",
]
