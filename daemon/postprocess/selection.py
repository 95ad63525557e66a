"""Which classes may be reported, and at what confidence: one threshold per class.

A class's threshold is, first that applies: its ``species_thresholds`` entry (the user's), the
model's own threshold for it (the sidecar's ``thresholds``, with ``model_thresholds`` on), then
``min_confidence`` (or the mode's default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Sequence

import numpy as np

from birdd.daemon.postprocess.config import PostprocessConfig, default_min_confidence
from birdd.daemon.postprocess.errors import PostprocessError
from birdd.engines.models.labels import Species, SpeciesIndex

NEVER_REPORTED = np.inf


@dataclass(frozen=True)
class ClassSelection:
    """``thresholds``: float32 minimum confidence per class, inf for classes never reported.
    ``named``: the classes listed in ``include``, which the location filter does not drop.
    ``from_model``: the classes whose threshold is the model's own (bool per class)."""

    thresholds: np.ndarray
    named: np.ndarray
    from_model: np.ndarray


def resolve_names(names: Iterable[str], index: SpeciesIndex, key: str) -> List[int]:
    """Class indices for user-typed names; an unknown name is a one-line PostprocessError."""
    indices = []
    for name in names:
        found = index.find(name)
        if found is None:
            raise PostprocessError(
                f"postprocess.{key}: unknown species {name!r}: use the label, scientific or "
                "common name or eBird code, see 'birdd species'"
            )
        indices.append(found)
    return indices


def _per_species_thresholds(thresholds: Dict[str, float], index: SpeciesIndex) -> Dict[int, float]:
    by_class: Dict[int, float] = {}
    first_name: Dict[int, str] = {}
    for name, threshold in thresholds.items():
        (found,) = resolve_names([name], index, "species_thresholds")
        if found in by_class and by_class[found] != threshold:
            raise PostprocessError(
                f"postprocess.species_thresholds: {first_name[found]!r} and {name!r} name the "
                "same species with different thresholds: keep one"
            )
        by_class[found] = threshold
        first_name.setdefault(found, name)
    return by_class


def model_class_thresholds(
    thresholds: Mapping[str, float], species: Sequence[Species]
) -> Dict[int, float]:
    """The sidecar's ``{label: threshold}`` by class index. Labels are checked when the model
    loads; one that is not a class here is still refused in one line, never ignored."""
    where = {sp.label: index for index, sp in enumerate(species)}
    by_class = {}
    for label, threshold in thresholds.items():
        if label not in where:
            raise PostprocessError(
                f"the model's thresholds name {label!r}, not one of its classes: correct the "
                "sidecar's thresholds or set postprocess.model_thresholds: false"
            )
        by_class[where[label]] = threshold
    return by_class


def select_classes(
    config: PostprocessConfig,
    species: Sequence[Species],
    live: bool,
    model_thresholds: Mapping[str, float],
) -> ClassSelection:
    """Apply min_confidence, the model's thresholds (``{label: confidence}`` from its sidecar),
    species_thresholds, include, exclude and non_birds."""
    index = SpeciesIndex(species)
    named = np.zeros(len(species), dtype=bool)
    named[resolve_names(config.include, index, "include")] = True
    if config.include:
        reportable = named.copy()
    else:
        reportable = np.array([sp.is_bird or config.non_birds for sp in species], dtype=bool)
    reportable[resolve_names(config.exclude, index, "exclude")] = False

    min_confidence = config.min_confidence
    if min_confidence is None:
        min_confidence = default_min_confidence(live)
    thresholds = np.full(len(species), min_confidence, dtype=np.float32)
    from_model = np.zeros(len(species), dtype=bool)
    if config.model_thresholds:
        for class_index, threshold in model_class_thresholds(model_thresholds, species).items():
            thresholds[class_index] = threshold
            from_model[class_index] = True
    for class_index, threshold in _per_species_thresholds(config.species_thresholds, index).items():
        thresholds[class_index] = threshold
        from_model[class_index] = False
    thresholds[~reportable] = NEVER_REPORTED
    return ClassSelection(thresholds=thresholds, named=named, from_model=from_model & reportable)
