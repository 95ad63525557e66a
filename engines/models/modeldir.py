"""Where installed models live, and how a model name in the config becomes a file.

Each installed model is a folder under ``<data dir>/models/`` with a ``manifest.json`` naming
its files per role and format, e.g. ``{"classifier": {"tflite": "model.tflite"},
"location": {"tflite": "meta.tflite"}}``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Optional

from birdd.engines.errors import ModelArtifactError

MANIFEST = "manifest.json"


def data_dir() -> Path:
    """``$BIRDD_DATA_DIR``, else ``$XDG_DATA_HOME/birdd``, else ``~/.local/share/birdd``."""
    explicit = os.environ.get("BIRDD_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "birdd"


def models_dir() -> Path:
    return data_dir() / "models"


def read_manifest(folder: Path) -> Dict[str, Dict[str, str]]:
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelArtifactError(
            f"model folder {folder} has no readable {MANIFEST} ({exc})"
        ) from None


def write_manifest(folder: Path, manifest: Dict[str, Dict[str, str]]) -> None:
    """Replace ``manifest.json`` atomically: a reader sees the old or the new one, never half."""
    partial = folder / (MANIFEST + ".partial")
    partial.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    os.replace(partial, folder / MANIFEST)


def resolve_model(name_or_path: str, fmt: str, role: str = "classifier") -> Path:
    """A path to an existing file is used as is; anything else names an installed model."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix and (candidate.exists() or os.sep in name_or_path):
        return candidate
    folder = models_dir() / name_or_path
    if not folder.is_dir():
        raise ModelArtifactError(
            f"model {name_or_path!r} is not installed in {models_dir()}: "
            f"run 'birdd models install {name_or_path}' or give a model file path"
        )
    entry = read_manifest(folder).get(role, {}).get(fmt)
    if entry is None:
        raise ModelArtifactError(
            f"installed model {name_or_path!r} has no {fmt} file for {role}: "
            f"choose another engine type or convert the model"
        )
    return folder / entry


def installed_location_model(name: str) -> Optional[Path]:
    """The location/week model shipped with an installed classifier, if there is one."""
    try:
        return resolve_model(name, "tflite", role="location")
    except ModelArtifactError:
        return None
