"""Raw label names → BirdNET's classes (``Genus species_Common name``) where BirdNET has them.

A dataset may name a species by BirdNET label, scientific name, common name, eBird code or a
folder name with ``_`` for spaces (``Coereba_flaveola``); all become BirdNET's label, so a
head's classes line up with BirdNET's and the report can compare the two. A name BirdNET does
not know stays a class of its own.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

from birdd.engines.models.labels import Species, SpeciesIndex, split_label


class LabelMapper:
    def __init__(self, birdnet_species: Sequence[Species]) -> None:
        self.species = list(birdnet_species)
        self.index = SpeciesIndex(self.species)
        self._cache: Dict[str, Species] = {}

    def _find(self, raw: str) -> Optional[Species]:
        candidates = [raw, raw.replace("_", " ")]
        if "_" in raw:
            candidates.append(split_label(raw)[0])  # "Genus species_Any common name"
        for candidate in candidates:
            found = self.index.find(candidate)
            if found is not None:
                return self.species[found]
        return None

    def species_for(self, raw: str) -> Species:
        """BirdNET's class for ``raw``, else a custom class named by it."""
        raw = raw.strip()
        if raw not in self._cache:
            found = self._find(raw)
            if found is None:
                scientific, common = split_label(raw)
                found = Species(scientific, common, None, True)
            self._cache[raw] = found
        return self._cache[raw]

    def label(self, raw: str) -> str:
        return self.species_for(raw).label
