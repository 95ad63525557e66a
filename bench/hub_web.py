"""Benchmark the hub's dashboard and HTTP API over a large store: p50 / p95 of each page's
requests and of the API queries, with 1,000,000 detections (10 stations, 50 species, 30 days
ending now) in SQLite and in a real PostgreSQL 15 (started here like the tests' fixture).

The store is filled through ``Store.write`` (the ingest's path, batches of 10,000); the web
server is the one ``birdd hub serve`` runs (uvicorn in a thread), asked over loopback HTTP by
one client, one request at a time. A *page* is its HTML plus the API requests its script makes
on load, timed one after the other (a browser makes them in parallel: an upper bound).

    python bench/hub_web.py [--rows 1000000] [--runs 40] [--backend sqlite postgres] [--no-doc]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple

import common

sys.path.insert(0, str(common.ROOT / "tests"))

from birdd.hub import api
from birdd.hub.config import load_hub_config
from birdd.hub.store import Batch, Store, open_store
from birdd.hub.store.base import NewDetection, NewStats
from birdd.hub.web.server import WebServer

STATIONS = [f"station-{n:02d}" for n in range(10)]
SPECIES = [(f"Genus{n:02d} species{n:02d}", f"Bird {n:02d}") for n in range(50)]
DAYS = 30
BATCH = 10_000
SECTION = "## Hub: dashboard and API over 1,000,000 detections (`bench/hub_web.py`)"


def detections(rows: int, now_ms: int) -> Iterator[NewDetection]:
    rng = random.Random(1)
    span = DAYS * api.DAY_MS
    weights = [1 / (k + 1) for k in range(len(SPECIES))]  # a few common species, a long tail
    for n in range(rows):
        start = now_ms - rng.randrange(span)
        scientific, common_name = rng.choices(SPECIES, weights)[0]
        yield NewDetection(
            id=f"{n:032x}",
            station=rng.choice(STATIONS),
            start_ms=start,
            end_ms=start + 3000,
            scientific=scientific,
            common=common_name,
            code=None,
            is_bird=True,
            confidence=round(rng.uniform(0.5, 1.0), 4),
            source="mic",
            channel="mix",
            lat=None,
            lon=None,
            payload=json.dumps({"id": f"{n:032x}", "station": "x"}),
            received_ms=start + 200,
        )


def fill(store: Store, rows: int) -> float:
    """Write ``rows`` detections and one stats report per station; detections/s."""
    now_ms = int(time.time() * 1000)
    began = time.perf_counter()
    batch: List[NewDetection] = []
    for row in detections(rows, now_ms):
        batch.append(row)
        if len(batch) == BATCH:
            store.write(Batch(detections=batch))
            batch = []
    store.write(Batch(detections=batch))
    stats = {"realtime_factor": 5.0, "outbox_backlog": 0, "mqtt_state": "connected"}
    store.write(Batch(stats=[NewStats(s, json.dumps(stats), now_ms) for s in STATIONS]))
    return rows / (time.perf_counter() - began)


def requests(store: Store) -> Dict[str, List[str]]:
    """Each page's requests and each API query, as paths."""
    midnight = str(api.parse_day(None).since_ms)
    station, species = STATIONS[3], urllib.parse.quote(SPECIES[0][0])
    rare = urllib.parse.quote(SPECIES[-1][0])
    first = store.detections(api.detection_query({"station": station, "limit": "1000"}))
    deep = f"{first[-1].cursor[0]}.{first[-1].cursor[1]}"
    return {
        "page: overview": ["/", "/api/stations", f"/api/species?since={midnight}"],
        "page: station": [
            f"/stations/{station}",
            f"/api/stations/{station}",
            f"/api/stations/{station}/day",
            f"/api/detections?station={station}&limit=50",
        ],
        "page: species (common)": [
            f"/species/{species}",
            f"/api/species/{species}",
            f"/api/detections?species={species}&limit=50",
        ],
        "api: stations": ["/api/stations"],
        "api: detections, newest 100": ["/api/detections"],
        "api: detections, station, page 2": [f"/api/detections?station={station}&before={deep}"],
        "api: detections, rare species": [f"/api/detections?species={rare}&limit=100"],
        "api: detections, one hour": [
            f"/api/detections?since={int(midnight) - 3_600_000}&until={midnight}&limit=1000"
        ],
        "api: species today, all stations": [f"/api/species?since={midnight}"],
        "api: station day (species + hourly)": [f"/api/stations/{station}/day"],
        "api: species 30 days (stations + daily)": [f"/api/species/{species}"],
        "api: CSV, a station's day": [f"/api/detections.csv?station={station}&since={midnight}"],
    }


def fetch(address: str, path: str) -> None:
    with urllib.request.urlopen(address + path, timeout=60) as answer:
        answer.read()
        assert answer.status == 200, path


def measure(address: str, paths: List[str], runs: int) -> Tuple[float, float]:
    """p50, p95 in ms of fetching ``paths`` one after the other (after one warm-up)."""
    for path in paths:
        fetch(address, path)
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        for path in paths:
            fetch(address, path)
        times.append((time.perf_counter() - began) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.95 * len(times)))]


def run_backend(name: str, opener: Callable[[], Store], rows: int, runs: int) -> Dict[str, object]:
    store = opener()
    rate = fill(store, rows)
    print(f"{name}: {rows:,} detections written at {rate:,.0f}/s", flush=True)
    server = WebServer(load_hub_config(None, {"web.listen": "127.0.0.1:0"}), opener()).start()
    results: Dict[str, Tuple[float, float]] = {}
    try:
        for label, paths in requests(store).items():
            results[label] = measure(server.address, paths, runs)
            print(f"  {label:42s} p50 {results[label][0]:7.1f} ms  p95 {results[label][1]:7.1f} ms")
    finally:
        server.stop()
        store.close()
    return {"rate": rate, "results": results}


def sqlite_backend(folder: Path) -> Callable[[], Store]:
    return lambda: open_store(sqlite=folder / "hub.sqlite")


def postgres_backend() -> Tuple[Callable[[], Store], Callable[[], None]]:
    """A PostgreSQL 15 server as the tests start one (postgres.py); the opener and a cleanup."""
    from postgres import PASSWORD, Postgres, make_template

    template = Path(tempfile.mkdtemp(prefix="birdd-pg-template-"))
    server = Postgres(make_template(template)).start()

    def remove() -> None:
        server.remove()
        shutil.rmtree(template, ignore_errors=True)

    return (lambda: open_store(postgres=server.dsn, password=PASSWORD)), remove


def markdown(rows: int, runs: int, measured: Dict[str, Dict[str, object]]) -> str:
    names = list(measured)
    lines = [
        SECTION,
        "",
        f"{rows:,} detections ({len(STATIONS)} stations, {len(SPECIES)} species, {DAYS} days "
        f"ending now), {runs} runs per row after a warm-up; one client, one request at a time "
        "over loopback. A page is its HTML plus the API requests its script makes on load, "
        "timed one after the other. Goal: p95 ≤ 200 ms. Machine: "
        f"{common.cpu_model()}, 2 cores shared with other work while this ran, so the numbers "
        "are upper bounds.",
        "",
        "| request | " + " | ".join(f"{n} p50 / p95 (ms)" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    labels = list(next(iter(measured.values()))["results"])  # type: ignore[call-overload]
    for label in labels:
        cells = []
        for name in names:
            p50, p95 = measured[name]["results"][label]  # type: ignore[index]
            cells.append(f"{p50:.1f} / {p95:.1f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    rates = ", ".join(f"{n} {measured[n]['rate']:,.0f}/s" for n in names)
    lines += ["", f"Filling the store through `Store.write` (batches of {BATCH:,}): {rates}.", ""]
    lines.append("Reproduce: `python bench/hub_web.py` (`--rows`, `--runs`, `--backend`).")
    return "\n".join(lines) + "\n"


def update_doc(text: str) -> None:
    doc = common.DOC.read_text(encoding="utf-8")
    if SECTION in doc:
        head, _, tail = doc.partition(SECTION)
        rest = re.split(r"\n(?=## |<!-- )", tail, maxsplit=1)  # up to the next section or marker
        doc = head + text + ("\n" + rest[1] if len(rest) > 1 else "")
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    common.DOC.write_text(doc, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--backend", nargs="+", default=["sqlite", "postgres"])
    parser.add_argument("--no-doc", action="store_true", help="print only")
    args = parser.parse_args()
    measured: Dict[str, Dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="birdd-hub-bench-") as folder:
        for name in args.backend:
            if name == "sqlite":
                measured["SQLite"] = run_backend(
                    "SQLite", sqlite_backend(Path(folder)), args.rows, args.runs
                )
            else:
                opener, remove = postgres_backend()
                try:
                    measured["PostgreSQL 15"] = run_backend(
                        "PostgreSQL 15", opener, args.rows, args.runs
                    )
                finally:
                    remove()
    text = markdown(args.rows, args.runs, measured)
    print(text)
    if not args.no_doc:
        update_doc(text)


if __name__ == "__main__":
    main()
