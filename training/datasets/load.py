"""DATA and negatives paths → one dataset: recordings with their labels mapped to classes."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from birdd.engines.models.labels import Species
from birdd.training.datasets.folders import read_class_folders, read_negative_folder
from birdd.training.datasets.labelmap import LabelMapper
from birdd.training.datasets.records import DatasetError, Recording
from birdd.training.datasets.segments import has_annotations, read_annotated_folder
from birdd.training.datasets.tables import (
    read_birdclef_csv,
    read_negative_labels,
    read_xc_labels,
    table_kind,
)

TABLE_READERS = {
    "birdclef": read_birdclef_csv,
    "xc": read_xc_labels,
    "negatives": read_negative_labels,
}
TABLE_NAMES = ("labels.csv", "train_metadata.csv")


@dataclass(frozen=True)
class Dataset:
    """The recordings (labels mapped to ``classes``) and the classes a model learns."""

    recordings: List[Recording]
    classes: List[Species]

    @property
    def labels(self) -> List[str]:
        return [species.label for species in self.classes]


def read_table(table: Path) -> List[Recording]:
    return TABLE_READERS[table_kind(table)](table)


def read_data(path: Path) -> List[Recording]:
    """A label table, a folder with one, a folder of annotated recordings, or class folders."""
    if not path.exists():
        raise DatasetError(f"training data {path} not found: check the path")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DatasetError(f"{path} is not a label table (.csv) or a data folder")
        return read_table(path)
    for name in TABLE_NAMES:
        if (path / name).is_file():
            return read_table(path / name)
    if has_annotations(path):
        return read_annotated_folder(path)
    return read_class_folders(path)


def read_negatives(path: Path) -> List[Recording]:
    """A folder of recordings with no bird; its ``labels.csv`` (file, class, source_id), if
    any, groups clips cut from one source recording."""
    if not path.is_dir():
        raise DatasetError(f"negatives folder {path} not found: check the path")
    table = path / "labels.csv"
    if table.is_file() and table_kind(table) == "negatives":
        return read_negative_labels(table)
    return read_negative_folder(path)


def _map(recording: Recording, mapper: LabelMapper) -> Recording:
    return dataclasses.replace(
        recording,
        labels=tuple(mapper.label(raw) for raw in recording.labels),
        secondary=tuple(mapper.label(raw) for raw in recording.secondary),
        excluded=tuple(mapper.label(raw) for raw in recording.excluded),
    )


def _restrict(recording: Recording, known: set) -> Optional[Recording]:
    """Keep only the chosen classes; None for a recording of other classes only (neither a
    positive nor a clean negative)."""
    labels = tuple(label for label in recording.labels if label in known)
    if recording.labels and not labels:
        return None
    secondary = tuple(label for label in recording.secondary if label in known)
    return dataclasses.replace(recording, labels=labels, secondary=secondary)


def _choose_classes(
    recordings: List[Recording], mapper: LabelMapper, wanted: Optional[Sequence[str]]
) -> List[Species]:
    present = Counter(label for rec in recordings for label in rec.labels)
    if wanted:
        chosen = [mapper.species_for(name) for name in wanted]
        missing = [sp.label for sp in chosen if sp.label not in present]
        if missing:
            raise DatasetError(
                f"class(es) {', '.join(missing)} not in the data: the data has "
                f"{', '.join(sorted(present)) or 'no labelled recordings'}"
            )
        return chosen
    if not present:
        raise DatasetError("the training data holds no labelled recording: nothing to learn")
    return [mapper.species_for(label) for label in sorted(present)]


def build_dataset(
    data: Sequence[Path],
    negatives: Sequence[Path],
    birdnet_species: Sequence[Species],
    classes: Optional[Sequence[str]] = None,
) -> Dataset:
    """Read every DATA path and negatives folder; map labels to BirdNET's; keep recordings of
    the chosen classes (all labelled classes by default) and the negatives."""
    mapper = LabelMapper(birdnet_species)
    raw = [rec for path in data for rec in read_data(Path(path))]
    raw += [rec for path in negatives for rec in read_negatives(Path(path))]
    mapped = [_map(rec, mapper) for rec in raw]
    chosen = _choose_classes(mapped, mapper, classes)
    known = {species.label for species in chosen}
    kept = [rec for rec in (_restrict(rec, known) for rec in mapped) if rec is not None]
    return Dataset(kept, chosen)
