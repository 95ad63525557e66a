"""The hub's clip budget over a real SQLite store and real files (fast tier): over the size
budget each station loses its surplus first, oldest first, with the file, its spectrogram and
its row (the detection stays); old clips expire, a file two detections share goes with both
rows and is weighed by its newest; under the free floor clips go; the thread of ``hub
serve`` makes a pass at start. The store's two queries run on PostgreSQL too
(tests/test_hub_store.py)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Iterator, List

import pytest

from birdd.hub.clipbudget import MB, ClipKeeper, keep_within_budget
from birdd.hub.clipfiles import ClipFiles
from birdd.hub.config import ClipsConfig
from birdd.hub.store import Batch, DetectionQuery, Store, open_store
from birdd.hub.store.base import ClipRow, NewDetection

DAY_MS = 86_400_000
NOW_MS = 1_733_558_400_000  # 2024-12-07T08:00:00Z
KB100 = 100_000


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(sqlite=tmp_path / "hub.sqlite")
    yield opened
    opened.close()


class Held:
    """Detections with clips, written to the store and the clips folder."""

    def __init__(self, store: Store, folder: Path) -> None:
        self.store, self.files = store, ClipFiles(folder)
        self.count = 0

    def add(
        self,
        station: str,
        species: str,
        confidence: float,
        age_ms: int,
        size: int = KB100,
        audio: bytes = b"",
    ) -> str:
        self.count += 1
        detection_id = f"{self.count:032x}"
        start = NOW_MS - age_ms
        message = json.dumps({"id": detection_id})
        row = NewDetection(
            detection_id, station, start, start + 3000, species, species, None, True,
            confidence, "mic", "mix", None, None, message, start + 500,
        )  # fmt: skip
        self.store.write(Batch(detections=[row]))
        data = audio or detection_id.encode() * (size // 32)
        sha = hashlib.sha256(data).hexdigest()
        self.files.save(data, sha)
        self.files.audio(sha).with_suffix(".png").write_bytes(b"png")
        clip = ClipRow(detection_id, station, sha, len(data), 3.0, 48000, start + 1000)
        self.store.add_clip(clip)
        return detection_id

    def kept(self) -> List[str]:
        return sorted(clip.detection_id for clip in self.store.held_clips())

    def files_on_disk(self) -> int:
        return len(list(self.files.folder.rglob("*.flac")))


def config(folder: Path, **budget) -> ClipsConfig:
    return ClipsConfig(dir=folder, min_free_mb=0, **budget)


def test_over_the_size_budget_each_station_loses_its_surplus_oldest_first(store, tmp_path):
    held = Held(store, tmp_path / "clips")
    weak_old = held.add("pond", "Turdus merula", 0.5, age_ms=5 * 3_600_000)
    weak_new = held.add("pond", "Turdus merula", 0.6, age_ms=1 * 3_600_000)
    best = [held.add("pond", "Turdus merula", c, age_ms=3 * 3_600_000) for c in (0.9, 0.8)]
    weak_mid = held.add("pond", "Turdus merula", 0.55, age_ms=2 * 3_600_000)
    warbler = held.add("pond", "Setophaga petechia", 0.3, age_ms=6 * 3_600_000)
    wood = [held.add("wood", "Turdus merula", c, age_ms=7 * 3_600_000) for c in (0.2, 0.3)]
    # 8 clips of 100 kB in 0.6 MB: 2 must go, the oldest of pond's blackbird surplus
    budget = config(held.files.folder, max_total_mb=0.6, keep_per_species_day=2)
    done = keep_within_budget(store, budget, NOW_MS / 1000)
    assert done == (2, 2 * KB100)
    assert held.kept() == sorted([weak_new, *best, warbler, *wood])
    assert not {weak_old, weak_mid} & set(held.kept())
    assert held.files_on_disk() == 6 and len(list(held.files.folder.rglob("*.png"))) == 6
    assert store.count_detections(DetectionQuery()) == 8  # the detections stay


def test_old_clips_expire_and_a_shared_file_goes_with_all_its_rows(store, tmp_path):
    held = Held(store, tmp_path / "clips")
    same = b"the same audio twice" * 5000
    old_pair = [held.add("pond", "Turdus merula", 0.9, age_ms=10 * DAY_MS, audio=same)]
    old_pair.append(held.add("wood", "Turdus merula", 0.9, age_ms=9 * DAY_MS, audio=same))
    other = b"another recording" * 5000
    renewed = held.add("pond", "Erithacus rubecula", 0.9, age_ms=10 * DAY_MS, audio=other)
    recent = held.add("pond", "Erithacus rubecula", 0.4, age_ms=DAY_MS // 2, audio=other)
    fresh = held.add("pond", "Turdus merula", 0.7, age_ms=DAY_MS // 2)
    done = keep_within_budget(store, config(held.files.folder, max_age_days=7), NOW_MS / 1000)
    assert done.clips == 1  # one file, two rows
    assert held.kept() == sorted([renewed, recent, fresh])
    assert held.files_on_disk() == 2


def test_under_the_free_floor_clips_go_oldest_first(store, tmp_path):
    held = Held(store, tmp_path / "clips")
    for n in range(6):
        held.add("pond", "Turdus merula", 0.5, age_ms=n * 60_000, size=MB)
    assert keep_within_budget(store, config(held.files.folder), NOW_MS / 1000).clips == 0
    # a floor above what this disk has free: the pass would free 10% of the floor more than
    # the shortfall (tests/test_clips_budget.py), more than the clips hold, so all of them go
    free = shutil.disk_usage(str(tmp_path)).free
    floor = ClipsConfig(dir=held.files.folder, min_free_mb=(free + 2.5 * MB) / MB)
    done = keep_within_budget(store, floor, NOW_MS / 1000)
    assert done == (6, 6 * MB) and held.kept() == [] and held.files_on_disk() == 0


def test_hub_serve_s_thread_makes_a_pass_at_start(store, tmp_path, caplog):
    held = Held(store, tmp_path / "clips")
    for n in range(4):
        held.add("pond", "Turdus merula", 0.5, age_ms=n * 60_000)
    path = tmp_path / "hub.sqlite"
    keeper = ClipKeeper(
        lambda: open_store(sqlite=path), config(held.files.folder, max_total_mb=0.2)
    )
    with caplog.at_level(logging.INFO, logger="birdd"):
        keeper.start()
        deadline = time.monotonic() + 10
        while keeper.deleted < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        keeper.stop()
    assert keeper.deleted == 2 and len(held.kept()) == 2
    assert "hub: clips budget: deleted 2 clip(s), 0.2 MB" in caplog.text
