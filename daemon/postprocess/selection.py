"""Which classes may be reported, and at what confidence: one threshold per class."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Sequence

import numpy as np

from birdd.daemon.postprocess.config import PostprocessConfig, default_min_confidence
from birdd.daemon.postprocess.errors import PostprocessError
from birdd.engines.models.labels import Species, SpeciesIndex

NEVER_REPORTED = np.inf


@dataclass(frozen=True)
class ClassSelection:
    """``thresholds``: float32 minimum confidence per class, inf for classes never reported.
    ``named``: the classes listed in ``include``, which the location filter does not drop."""

    thresholds: np.ndarray
    named: np.ndarray


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


def select_classes(
    config: PostprocessConfig, species: Sequence[Species], live: bool
) -> ClassSelection:
    """Apply min_confidence, species_thresholds, include, exclude and non_birds."""
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
    for class_index, threshold in _per_species_thresholds(config.species_thresholds, index).items():
        thresholds[class_index] = threshold
    thresholds[~reportable] = NEVER_REPORTED
    return ClassSelection(thresholds=thresholds, named=named)
