"""What makes two analyses of a file the same, so that a resumed job skips what is done.

A file is done when the store has a 'done' row with its path, size and modification time
(ns), the model's sha256 and the hash of the settings that change detections: everything
under ``postprocess`` (thresholds, filters, location, gate), the window overlap and the
analysed channels. Engine threads, batch size, outputs and the database do not count.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Tuple

from birdd.daemon.config import BirddConfig

FileId = Tuple[str, int, int]
"""(absolute path, size in bytes, modification time in ns)."""


@dataclass(frozen=True)
class AnalysisKey:
    """The model and settings half of the resume key, the same for every file of a job."""

    model_sha256: str
    settings_sha256: str

    def row(self, file_id: FileId) -> Dict[str, Any]:
        """The key columns of a file's row in ``analyzed_files``."""
        path, size, mtime_ns = file_id
        return {
            "path": path,
            "size": size,
            "mtime_ns": mtime_ns,
            "model_sha256": self.model_sha256,
            "settings_sha256": self.settings_sha256,
        }


def file_id(path: Path) -> FileId:
    """The file half of the resume key; OSError when the file cannot be read."""
    status = path.stat()
    return str(path), status.st_size, status.st_mtime_ns


def settings_sha256(config: BirddConfig) -> str:
    relevant = {
        "postprocess": config.postprocess.model_dump(mode="json"),
        "overlap_s": config.windows.overlap_s,
        "channels": config.audio.channels,
    }
    text = json.dumps(relevant, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def analysis_key(config: BirddConfig, model: Dict[str, str]) -> AnalysisKey:
    """``model`` is the artifact's identity (``ModelArtifact.identity()``)."""
    return AnalysisKey(model.get("sha256") or model.get("name", ""), settings_sha256(config))
