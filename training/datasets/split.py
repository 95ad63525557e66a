"""Train / validation / test split by group (recordist), stratified by class, seeded.

Windows of one recording, and recordings of one recordist, are alike in ways a model can learn
(microphone, site, the individual bird): a split that puts them on both sides reports inflated
scores. Whole groups are therefore assigned, greedily: groups holding the rarest classes first,
each to the split that most lacks its classes relative to the target fractions, so that a class
of three or more recordists has one in each split.
"""

from __future__ import annotations

import csv
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from birdd.training.datasets.records import DatasetError, Recording

SPLITS = ("train", "val", "test")
NEGATIVE = "(negative)"
SPLIT_COLUMNS = ("key", "split", "group", "labels", "secondary", "path", "start_s", "end_s")


def _classes_of(recording: Recording) -> Tuple[str, ...]:
    return recording.labels or (NEGATIVE,)


def _group_counts(recordings: Sequence[Recording]) -> Dict[str, Counter]:
    groups: Dict[str, Counter] = defaultdict(Counter)
    for recording in recordings:
        groups[recording.group or recording.key].update(_classes_of(recording))
    return groups


def assign_groups(
    recordings: Sequence[Recording], fractions: Sequence[float], seed: int
) -> Dict[str, str]:
    """Group → split name. Deterministic for a seed; ties broken by the seeded shuffle."""
    if len(fractions) != len(SPLITS) or abs(sum(fractions) - 1) > 1e-6:
        raise DatasetError(f"split fractions {list(fractions)} must be three numbers summing to 1")
    return _assign(recordings, SPLITS, fractions, seed)


def _assign(
    recordings: Sequence[Recording],
    bins: Sequence[str],
    fractions: Sequence[float],
    seed: int,
    balance: bool = False,
) -> Dict[str, str]:
    """Group → bin, each group where its classes are most lacking (see the module's text).
    Ties go to the bin of the larger fraction or, with ``balance`` (equal folds), to the bin
    holding fewer recordings."""
    groups = _group_counts(recordings)
    totals: Counter = Counter()
    for counts in groups.values():
        totals.update(counts)
    names = sorted(groups)
    random.Random(seed).shuffle(names)
    # Rarest class first, then larger groups first: the hard placements are made while the
    # bins are still empty.
    names.sort(key=lambda g: (min(totals[c] for c in groups[g]), -sum(groups[g].values())))
    current = {name: Counter() for name in bins}
    assignment = {}
    for name in names:
        counts = groups[name]

        def need(index: int, counts: Counter = counts) -> float:
            """How much of its target share of this group's classes the bin still lacks,
            relative to that share: an empty bin lacks all of it (1.0), so the first groups
            of a class go to different bins."""
            target = bins[index]
            return sum(
                n * (1 - current[target][c] / (fractions[index] * totals[c]))
                for c, n in counts.items()
            )

        def tie(index: int) -> float:
            return -sum(current[bins[index]].values()) if balance else fractions[index]

        best = max(range(len(bins)), key=lambda i: (need(i), tie(i)))
        assignment[name] = bins[best]
        current[bins[best]].update(counts)
    return assignment


def recordist_folds(
    recordings: Sequence[Recording], folds: int, seed: int = 0
) -> List[List[Recording]]:
    """``folds`` disjoint sets of whole groups (recordists), stratified as the split is: for
    cross-validation, each fold is the test set once."""
    if folds < 3:
        raise DatasetError(f"{folds} folds: cross-validation needs at least 3 (train, val, test)")
    names = [str(index) for index in range(folds)]
    assignment = _assign(recordings, names, [1.0 / folds] * folds, seed, balance=True)
    result: List[List[Recording]] = [[] for _ in range(folds)]
    for recording in recordings:
        result[int(assignment[recording.group or recording.key])].append(recording)
    return result


def fold_split(folds: Sequence[List[Recording]], index: int) -> Dict[str, List[Recording]]:
    """Fold ``index`` as the test set, the next one as validation, the rest as training."""
    val = (index + 1) % len(folds)
    train = [rec for i, fold in enumerate(folds) if i not in (index, val) for rec in fold]
    return {"train": train, "val": list(folds[val]), "test": list(folds[index])}


def split_recordings(
    recordings: Sequence[Recording], fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0
) -> Dict[str, List[Recording]]:
    assignment = assign_groups(recordings, fractions, seed)
    result: Dict[str, List[Recording]] = {split: [] for split in SPLITS}
    for recording in recordings:
        result[assignment[recording.group or recording.key]].append(recording)
    return result


def write_split(path: Path, split: Dict[str, List[Recording]]) -> None:
    """split.csv: one row per recording (or segment) with its split and group."""
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(SPLIT_COLUMNS)
        for name in SPLITS:
            for rec in split[name]:
                writer.writerow(
                    [
                        rec.key,
                        name,
                        rec.group,
                        ";".join(rec.labels),
                        ";".join(rec.secondary),
                        str(rec.path),
                        "" if rec.start_s is None else rec.start_s,
                        "" if rec.end_s is None else rec.end_s,
                    ]
                )


def read_split(path: Path) -> Dict[str, str]:
    """key → split name, from a split.csv written by ``write_split``."""
    with path.open(newline="", encoding="utf-8") as stream:
        return {row["key"]: row["split"] for row in csv.DictReader(stream)}


def classes_missing(split: Dict[str, List[Recording]], labels: Sequence[str]) -> Dict[str, list]:
    """Split name → classes with no recording there (a class of one recordist, say)."""
    missing = {}
    for name, recordings in split.items():
        present = {label for rec in recordings for label in rec.labels}
        missing[name] = [label for label in labels if label not in present]
    return missing
