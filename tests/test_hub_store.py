"""The hub's store, the same tests on SQLite (fast tier) and on a real PostgreSQL 15 (system):
schema migrations, idempotent writes with the resend count, station health, the dashboard's
queries, and one-line errors for a bad path or DSN."""

from __future__ import annotations

import itertools
import json
import os
import stat
from pathlib import Path
from typing import Iterator

import pytest
from broker import free_port
from postgres import PASSWORD, Postgres

from birdd.hub.store import Batch, DetectionQuery, StoreError, StoreUnavailable, open_store
from birdd.hub.store.base import (
    ClipRow,
    NewDetection,
    NewRejected,
    NewStats,
    NewStatus,
    Store,
)
from birdd.hub.store.schema import LATEST

DATABASES = itertools.count()
HOUR = 3_600_000
T0 = 1_715_752_800_000  # 2024-05-15T06:00:00Z


def detection(
    n: int, station: str = "garden", species: str = "Turdus merula", **extra
) -> NewDetection:
    start = T0 + n * 60_000
    fields = dict(
        id=f"{n:032x}",
        station=station,
        start_ms=start,
        end_ms=start + 3000,
        scientific=species,
        common=species.split()[-1],
        code=None,
        is_bird=True,
        confidence=0.5 + (n % 5) / 10,
        source="mic",
        channel="mix",
        lat=47.0,
        lon=8.0,
        payload=json.dumps({"id": f"{n:032x}", "n": n}),
        received_ms=start + 500,
    )
    fields.update(extra)
    return NewDetection(**fields)


@pytest.fixture(scope="module")
def pg_server(postgres_template: Path) -> Iterator[Postgres]:
    """One server for this module's tests; each test gets a database of its own."""
    server = Postgres(postgres_template).start()
    yield server
    server.remove()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.system)])
def store(request, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        opened = open_store(sqlite=tmp_path / "hub.sqlite")
    else:
        server = request.getfixturevalue("pg_server")
        database = f"t{next(DATABASES)}"
        server.psql(f"CREATE DATABASE {database}")
        opened = open_store(postgres=f"{server.dsn} dbname={database}", password=PASSWORD)
    yield opened
    opened.close()


def test_migrations_run_once_and_reopening_keeps_the_data(store, tmp_path, request):
    assert store.schema_version() == LATEST
    store.write(Batch(detections=[detection(1)]))
    store.reconnect()
    assert store.schema_version() == LATEST
    assert [row.id for row in store.detections(DetectionQuery())] == [f"{1:032x}"]


def test_a_resent_detection_is_stored_once_and_counted(store):
    first = [detection(n) for n in range(5)]
    store.write(Batch(detections=first))
    store.write(Batch(detections=[detection(2), detection(3), detection(9)]))
    store.write(Batch(detections=[detection(2), detection(2)]))  # twice in one batch
    rows = {row.id: row for row in store.detections(DetectionQuery(limit=50))}
    assert len(rows) == 6
    assert rows[f"{2:032x}"].resends == 3 and rows[f"{3:032x}"].resends == 1
    assert rows[f"{0:032x}"].resends == 0
    assert json.loads(rows[f"{4:032x}"].payload) == {"id": f"{4:032x}", "n": 4}


def test_filters_pagination_and_counts(store):
    batch = [detection(n, station=("a", "b")[n % 2]) for n in range(30)]
    batch += [detection(100 + n, species="Parus major") for n in range(5)]
    store.write(Batch(detections=batch))
    newest = store.detections(DetectionQuery(limit=3))
    assert [row.start_ms for row in newest] == sorted((r.start_ms for r in newest), reverse=True)
    assert newest[0].scientific == "Parus major"
    assert store.count_detections(DetectionQuery(station="a")) == 15
    since, until = T0 + 10 * 60_000, T0 + 20 * 60_000
    window = store.detections(DetectionQuery(station="b", since_ms=since, until_ms=until))
    assert [row.id for row in window] == [f"{n:032x}" for n in (19, 17, 15, 13, 11)]
    pages, cursor = [], None
    while True:
        page = store.detections(DetectionQuery(species="Turdus merula", limit=7, before=cursor))
        if not page:
            break
        pages.append(page)
        cursor = page[-1].cursor
    ids = [row.id for page in pages for row in page]
    assert len(pages) == 5 and ids == [f"{n:032x}" for n in range(29, -1, -1)]
    confident = store.count_detections(DetectionQuery(min_confidence=0.85))
    assert confident == sum(1 for d in batch if d.confidence >= 0.85)


def test_species_summary_and_hourly_activity(store):
    batch = [detection(n, station=("a", "b")[n % 2]) for n in range(0, 180, 3)]  # 3 h
    batch += [detection(500 + n, station="a", species="Parus major") for n in range(4)]
    store.write(Batch(detections=batch))
    species = store.species()
    assert [(s.scientific, s.detections, s.stations) for s in species] == [
        ("Turdus merula", 60, 2),
        ("Parus major", 4, 1),
    ]
    assert species[0].first_ms == T0 and species[0].last_ms == T0 + 177 * 60_000
    only_a = store.species(station="a", since_ms=T0 + 8 * HOUR)
    assert [(s.scientific, s.detections) for s in only_a] == [("Parus major", 4)]
    hourly = store.activity(3600, species="Turdus merula")
    assert [(b.start_ms, b.detections) for b in hourly] == [
        (T0, 20),
        (T0 + HOUR, 20),
        (T0 + 2 * HOUR, 20),
    ]
    shifted = store.activity(3600, station="a", species="Turdus merula", offset_s=1800)
    assert [b.start_ms for b in shifted] == [T0 - HOUR // 2 + k * HOUR for k in range(4)]
    assert sum(b.detections for b in shifted) == 30


def test_station_health_from_status_and_stats(store):
    store.write(Batch(statuses=[NewStatus("garden", "online", True, T0)]))
    store.write(Batch(detections=[detection(1, station="garden")]))
    report = {"station": "garden", "outbox_backlog": 3, "realtime_factor": 12.5}
    store.write(Batch(stats=[NewStats("garden", json.dumps(report), T0 + 1000)]))
    store.write(Batch(statuses=[NewStatus("garden", "online", True, T0 + 2000)]))  # again
    store.write(Batch(statuses=[NewStatus("garden", "offline", False, T0 + 9000)]))
    (garden,) = store.stations()
    assert garden.status == "offline" and garden.status_ms == T0 + 9000
    assert garden.stats == report and garden.stats_ms == T0 + 1000
    assert (garden.lat, garden.lon) == (47.0, 8.0)
    assert garden.last_detection_ms == T0 + 60_000 + 500
    assert garden.first_seen_ms == T0 and garden.last_seen_ms == T0 + 60_500
    history = store.status_history("garden")
    assert [(e.status, e.retained) for e in history] == [("offline", False), ("online", True)]
    assert [s.stats for s in store.stats_history("garden")] == [report]
    assert store.station("nowhere") is None


def test_rejected_messages_are_kept_with_the_reason(store):
    kept = NewRejected("birdd/x/detections", "not JSON", b"\x00\xff{", 3, T0)
    big = NewRejected("birdd/x/detections", "too big", b"a" * 4096, 1_000_000, T0 + 1)
    store.write(Batch(rejected=[kept, big]))
    rows = store.rejected()
    assert [(r.reason, r.size, r.payload[:3]) for r in rows] == [
        ("too big", 1_000_000, b"aaa"),
        ("not JSON", 3, b"\x00\xff{"),
    ]
    assert store.rejected(before_id=rows[0].id)[0].reason == "not JSON"


def test_held_clips_carry_their_detection_and_forgotten_clips_leave_it(store):
    store.write(Batch(detections=[detection(1, confidence=0.8), detection(2)]))
    for n, sha in ((1, "a" * 64), (2, "a" * 64), (3, "b" * 64)):  # 3: its message not yet in
        store.add_clip(ClipRow(f"{n:032x}", "garden", sha, 1000 * n, 1.0, 48000, T0 + n))
    held = {clip.detection_id: clip for clip in store.held_clips()}
    one, three = held[f"{1:032x}"], held[f"{3:032x}"]
    assert (one.sha256, one.size, one.start_ms, one.scientific) == (
        "a" * 64,
        1000,
        T0 + 60_000,
        "Turdus merula",
    )
    assert one.confidence == 0.8
    assert (three.start_ms, three.scientific, three.confidence) == (T0 + 3, "", None)
    store.forget_clips([f"{1:032x}", f"{3:032x}"])
    assert [clip.detection_id for clip in store.held_clips()] == [f"{2:032x}"]
    assert store.count_detections(DetectionQuery()) == 2


def test_an_unwritable_sqlite_path_is_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, stat.S_IRUSR | stat.S_IXUSR)
    if os.geteuid() == 0:
        target = Path("/proc/birdd-hub/hub.sqlite")  # root writes anywhere but here
    else:
        target = locked / "sub" / "hub.sqlite"
    with pytest.raises(StoreError) as error:
        open_store(sqlite=target)
    assert "give a writable --db PATH" in str(error.value) and "\n" not in str(error.value)


def test_a_dsn_with_a_password_or_garbage_is_refused_before_connecting():
    with pytest.raises(StoreError, match="put no password in the DSN"):
        open_store(postgres="host=127.0.0.1 dbname=x password=hunter2")
    with pytest.raises(StoreError, match="not a PostgreSQL DSN"):
        open_store(postgres="host=127.0.0.1 dbname")


@pytest.mark.system
def test_postgres_down_is_unavailable_and_a_wrong_password_is_an_error(pg_server):
    nobody = f"host=127.0.0.1 port={free_port()} dbname=birdd user=birdd"
    with pytest.raises(StoreUnavailable, match=r"PostgreSQL at 127\.0\.0\.1"):
        open_store(postgres=nobody, password=PASSWORD)
    with pytest.raises(StoreError, match="password authentication failed") as error:
        open_store(postgres=pg_server.dsn, password="wrong")
    assert not isinstance(error.value, StoreUnavailable)


@pytest.mark.system
def test_postgres_restart_makes_the_store_unavailable_until_it_reconnects(pg_server):
    pg_server.psql("CREATE DATABASE restarted")
    store = open_store(postgres=f"{pg_server.dsn} dbname=restarted", password=PASSWORD)
    store.write(Batch(detections=[detection(1)]))
    pg_server.restart()
    with pytest.raises(StoreUnavailable):
        store.write(Batch(detections=[detection(2)]))
    store.reconnect()
    store.write(Batch(detections=[detection(2)]))
    assert store.count_detections(DetectionQuery()) == 2
    store.close()


# -- detection_hours: the aggregates from the rollup equal those of the raw rows ---------------


def _rollup_batches() -> list:
    """Detections over ~5 hours off the hour, 3 stations, a species with two common names and
    codes, resends within a batch and across batches."""
    rows = [
        detection(n * 7, station=("a", "b", "c")[n % 3], confidence=0.5 + (n * 37 % 50) / 100)
        for n in range(45)
    ]
    rows += [
        detection(
            1000 + n,
            species="Parus major",
            station="b",
            start_ms=T0 + n * 1_234_567,
            common=("Kohlmeise", "Great tit")[n % 2],
            code=(None, "grtit1")[n % 3 == 0],
        )
        for n in range(14)
    ]
    return [rows[:30], rows[20:40] + rows[25:27], rows[35:], rows[50:55]]


def _raw_rows(store) -> list:
    return store.detections(DetectionQuery(limit=10_000))


def _raw_species(rows, key, station=None, species=None, since=None, until=None) -> list:
    """What the old GROUP BY over ``detections`` answered, computed from the rows."""
    groups: dict = {}
    for r in rows:
        if (station and r.station != station) or (species and r.scientific != species):
            continue
        if (since is not None and r.start_ms < since) or (
            until is not None and r.start_ms >= until
        ):
            continue
        groups.setdefault(getattr(r, key), []).append(r)
    answers = []
    for name, members in groups.items():
        codes = [m.code for m in members if m.code is not None]
        answers.append(
            (
                name,
                min(m.common for m in members),
                min(codes) if codes else None,
                len(members),
                min(m.start_ms for m in members),
                max(m.start_ms for m in members),
                len({m.station for m in members}),
                max(m.confidence for m in members),
            )
        )
    return sorted(answers, key=lambda a: (-a[3], a[0]))


def _raw_activity(rows, bucket_s, offset_s, station=None, since=None, until=None) -> list:
    width, offset = bucket_s * 1000, offset_s * 1000
    counts: dict = {}
    for r in rows:
        if (station and r.station != station) or (since is not None and r.start_ms < since):
            continue
        if until is not None and r.start_ms >= until:
            continue
        key = ((r.start_ms + offset) // width * width - offset, r.scientific)
        counts[key] = counts.get(key, 0) + 1
    return sorted((start, name, n) for (start, name), n in counts.items())


RANGES = [
    (None, None),
    (T0, T0 + 3 * HOUR),  # whole hours
    (T0 + 1234, T0 + 2 * HOUR + 999),  # partial hours at both edges
    (T0 - 10 * HOUR, T0 + HOUR // 2),
    (T0 + HOUR + 5, T0 + HOUR + 1_800_000),  # inside one hour
    (T0 + 2 * HOUR, T0 + 2 * HOUR),  # empty
    (T0 + 90 * 60_000, None),
]


def _assert_rollup_answers_equal_raw(store) -> None:
    rows = _raw_rows(store)
    for since, until in RANGES:
        for station in (None, "b"):
            got = [tuple(vars(s).values()) for s in store.species(station, since, until)]
            assert got == _raw_species(rows, "scientific", station, None, since, until)
            for bucket_s, offset_s in ((3600, 0), (3600, 7200), (86400, 3600), (3600, 1800)):
                got = [
                    (b.start_ms, b.scientific, b.detections)
                    for b in store.activity(bucket_s, station, None, since, until, offset_s)
                ]
                assert got == _raw_activity(rows, bucket_s, offset_s, station, since, until)
        for species in ("Turdus merula", "Parus major"):
            got = [tuple(vars(s).values()) for s in store.species_stations(species, since, until)]
            want = _raw_species(rows, "station", None, species, since, until)
            assert got == [(w[0], *w[3:6], w[7]) for w in want]


def _reopen(store) -> Store:
    if getattr(store, "path", None) is not None:
        return open_store(sqlite=store.path)
    return open_store(postgres=store.dsn, password=store.password)


def test_rollup_answers_equal_the_raw_rows_after_resends_and_after_a_backfill(store):
    for batch in _rollup_batches():
        store.write(Batch(detections=batch))
    assert sum(r.resends for r in _raw_rows(store)) == 10 + 2 + 5 + 5
    _assert_rollup_answers_equal_raw(store)
    # the migration's backfill builds the same table from the rows a version-1 hub stored
    store._run(True, lambda c: store._execute(c, "DROP TABLE detection_hours"))
    store._run(True, lambda c: store._execute(c, "DELETE FROM schema_migrations WHERE version = 2"))
    backfilled = _reopen(store)
    try:
        assert backfilled.schema_version() == LATEST
        _assert_rollup_answers_equal_raw(backfilled)
    finally:
        backfilled.close()
