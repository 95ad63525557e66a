"""The location/week filter over a classifier's classes, following the calendar."""

from __future__ import annotations

from datetime import datetime
from typing import Dict, Sequence

import numpy as np

from birdd.daemon.postprocess.config import LocationConfig
from birdd.engines.models.labels import Species
from birdd.engines.models.location import LocationModel, birdnet_week


def align_mask(
    mask: np.ndarray, mask_species: Sequence[Species], classes: Sequence[Species]
) -> np.ndarray:
    """Carry a mask over the location model's classes onto the classifier's classes, matched by
    scientific name; a class the location model does not know is kept (it cannot be judged)."""
    if [sp.label for sp in mask_species] == [sp.label for sp in classes]:
        return mask
    expected = {sp.scientific: bool(keep) for sp, keep in zip(mask_species, mask)}
    return np.array([expected.get(sp.scientific, True) for sp in classes], dtype=bool)


class LocationFilter:
    """bool mask of the classes expected at the station in the week of a given moment.

    With ``week`` unset the week follows the audio's UTC date, so a daemon that runs for
    months moves through the seasons; masks are computed once per week.
    """

    def __init__(
        self, config: LocationConfig, model: LocationModel, classes: Sequence[Species]
    ) -> None:
        self._config = config
        self._model = model
        self._classes = classes
        self._masks: Dict[int, np.ndarray] = {}

    def week_of(self, moment: datetime) -> int:
        return self._config.week if self._config.week is not None else birdnet_week(moment.date())

    def mask(self, week: int) -> np.ndarray:
        if week not in self._masks:
            config = self._config
            mask = self._model.species_mask(config.lat, config.lon, week, config.threshold)
            self._masks[week] = align_mask(mask, self._model.species, self._classes)
        return self._masks[week]
