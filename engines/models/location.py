"""BirdNET's location/week meta model: which species to expect at a place in a week of the year.

The model takes ``[[lat, lon, week]]`` (week 1–48, four per month, or −1 for the whole year)
and returns one probability per class, already passed through a sigmoid.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any, List, Optional, Union

import numpy as np

from birdd.engines.errors import EngineError, ModelArtifactError
from birdd.engines.models.artifact import ModelArtifact, load_artifact
from birdd.engines.models.labels import Species
from birdd.engines.models.modeldir import installed_location_model, read_manifest
from birdd.engines.runtime.native_log import without_delegate_banner
from birdd.engines.tflite import import_interpreter

YEAR_ROUND = -1


def birdnet_week(day: date) -> int:
    """BirdNET's week of the year: four per month, days 29–31 fall into the month's 4th week."""
    return (day.month - 1) * 4 + min(4, (day.day - 1) // 7 + 1)


def check_week(week: int) -> int:
    if week != YEAR_ROUND and not 1 <= week <= 48:
        raise ValueError(f"week {week} is not -1 (year-round) or 1..48")
    return week


def location_model_beside(classifier_path: Path) -> Optional[Path]:
    """The location model named by the manifest in the classifier's folder, if it has one."""
    folder = Path(classifier_path).parent
    try:
        entry = read_manifest(folder).get("location", {}).get("tflite")
    except ModelArtifactError:
        return None
    return folder / entry if entry else None


class LocationModel:
    """A loaded location/week model; ``path`` defaults to the one installed with BirdNET."""

    def __init__(self, path: Union[Path, str, None] = None, runtime: str = "auto") -> None:
        if path is None:
            path = installed_location_model("birdnet")
            if path is None:
                raise ModelArtifactError(
                    "no location model is installed: run 'birdd models install birdnet'"
                )
        self.artifact: ModelArtifact = load_artifact(path)
        if self.artifact.kind != "location":
            raise ModelArtifactError(
                f"model {self.artifact.path} is a {self.artifact.kind} model, not a location model"
            )
        self._interpreter = self._load(import_interpreter(runtime))

    @property
    def species(self) -> List[Species]:
        return self.artifact.species

    def _load(self, interpreter_class: Any) -> Any:
        try:
            with without_delegate_banner():
                interpreter = interpreter_class(model_path=str(self.artifact.path), num_threads=1)
                interpreter.allocate_tensors()
        except Exception as exc:  # the runtimes raise ValueError/RuntimeError for corrupt files
            raise EngineError(f"cannot load location model {self.artifact.path}: {exc}") from exc
        outputs = int(interpreter.get_output_details()[0]["shape"][-1])
        if outputs != self.artifact.num_classes:
            raise ModelArtifactError(
                f"location model {self.artifact.path} has {outputs} outputs but its sidecar "
                f"lists {self.artifact.num_classes} classes: reinstall it"
            )
        return interpreter

    def probabilities(self, lat: float, lon: float, week: int) -> np.ndarray:
        """float32[classes]: how likely each class is to occur at (lat, lon) in ``week``."""
        features = np.array([[lat, lon, check_week(week)]], dtype=np.float32)
        interpreter = self._interpreter
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], features)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0].copy()

    def species_mask(self, lat: float, lon: float, week: int, threshold: float) -> np.ndarray:
        """bool[classes]: True for the classes whose probability reaches ``threshold``."""
        return self.probabilities(lat, lon, week) >= threshold
