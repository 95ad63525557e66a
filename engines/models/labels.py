"""Class labels of a model: scientific and common names, species codes, the bird/non-bird tag."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple


@dataclass(frozen=True)
class Species:
    """One output class of a model."""

    scientific: str
    common: str
    code: Optional[str]
    is_bird: bool

    @property
    def label(self) -> str:
        """The ``Scientific_Common`` form used by BirdNET label files and species lists."""
        return f"{self.scientific}_{self.common}"

    def to_json(self) -> Dict[str, object]:
        return {
            "scientific": self.scientific,
            "common": self.common,
            "code": self.code,
            "is_bird": self.is_bird,
        }


def split_label(label: str) -> Tuple[str, str]:
    """Split ``Scientific name_Common name``; a label without ``_`` names both parts the same."""
    scientific, _, common = label.strip().partition("_")
    return scientific, common or scientific


def is_bird_label(scientific: str, common: str, code: Optional[str]) -> bool:
    """BirdNET's non-bird classes either repeat their name (``Dog_Dog``, ``Noise_Noise``) or carry
    a ``t-<taxon>`` code (frogs, toads, insects); every bird has a distinct common name and an
    eBird code."""
    if code is not None and code.startswith("t-"):
        return False
    return scientific != common


def species_from_labels(labels: Sequence[str], codes: Dict[str, str]) -> List[Species]:
    """Build the class list from ``Scientific_Common`` labels and a label → code map."""
    result = []
    for label in labels:
        scientific, common = split_label(label)
        code = codes.get(label.strip())
        result.append(Species(scientific, common, code, is_bird_label(scientific, common, code)))
    return result


class SpeciesIndex:
    """Looks classes up by any name a user may type: label, scientific, common name or code."""

    def __init__(self, species: Iterable[Species]) -> None:
        self.species = list(species)
        self._by_key: Dict[str, int] = {}
        for index, sp in enumerate(self.species):
            for key in (sp.label, sp.scientific, sp.common, sp.code):
                if key:
                    self._by_key.setdefault(key.casefold(), index)

    def __len__(self) -> int:
        return len(self.species)

    def find(self, name: str) -> Optional[int]:
        """Return the class index for a name, or None when the model has no such class."""
        return self._by_key.get(name.strip().casefold())
