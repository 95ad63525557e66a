"""The hub's HTTP API and pages through the real web server (uvicorn on a free port) over a
real store, SQLite (fast tier) and PostgreSQL 15 (system): filters, keyset pages, CSV, a
station's day, a species' stations and days, the OpenAPI schema, escaping, and the token."""

from __future__ import annotations

import base64
import csv
import io
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import pytest
from postgres import PASSWORD, Postgres

from birdd.hub import api
from birdd.hub.config import load_hub_config
from birdd.hub.store import Batch, DetectionQuery, Store, open_store
from birdd.hub.store.base import NewDetection, NewStats, NewStatus
from birdd.hub.web.server import WebServer

HOUR = 3_600_000
DAY = api.parse_day(None)
SPECIES = {"Turdus merula": "Eurasian Blackbird", "Parus major": "Great Tit"}
XSS = "<script>alert(1)</script>"


def detection(n: int, station: str, scientific: str, start_ms: int) -> NewDetection:
    return NewDetection(
        id=f"{n:032x}",
        station=station,
        start_ms=start_ms,
        end_ms=start_ms + 3000,
        scientific=scientific,
        common=SPECIES.get(scientific, scientific),
        code=None,
        is_bird=True,
        confidence=0.5 + (n % 5) / 10,
        source="mic",
        channel="mix",
        lat=None,
        lon=None,
        payload=json.dumps({"id": f"{n:032x}"}),
        received_ms=start_ms + 500,
    )


def day_batch() -> Batch:
    """Station a: a blackbird every 10 min from 05:00 to 07:00 and 4 great tits at 06:xx;
    station b: 3 blackbirds at 08:00; one blackbird at a yesterday."""
    since = DAY.since_ms
    rows = [detection(n, "a", "Turdus merula", since + 5 * HOUR + n * 600_000) for n in range(12)]
    rows += [
        detection(100 + n, "a", "Parus major", since + 6 * HOUR + n * 60_000) for n in range(4)
    ]
    rows += [
        detection(200 + n, "b", "Turdus merula", since + 8 * HOUR + n * 1000) for n in range(3)
    ]
    rows.append(detection(300, "a", "Turdus merula", since - 2 * HOUR))
    stats = {"realtime_factor": 4.5, "outbox_backlog": 2, "mqtt_state": "connected"}
    return Batch(
        detections=rows,
        statuses=[NewStatus("a", "online", True, since)],
        stats=[NewStats("a", json.dumps(stats), since + 1)],
    )


@pytest.fixture(scope="module")
def shared_postgres(postgres_template: Path) -> Iterator[Postgres]:
    """One server for the module (a start costs seconds): every test writes the same batch,
    and a detection written twice is stored once."""
    server = Postgres(postgres_template).start()
    yield server
    server.remove()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.system)])
def store(request, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        opened = open_store(sqlite=tmp_path / "hub.sqlite")
    else:
        server = request.getfixturevalue("shared_postgres")
        opened = open_store(postgres=server.dsn, password=PASSWORD)
    yield opened
    opened.close()


def start(store: Store, listen: str = "127.0.0.1:0") -> WebServer:
    return WebServer(load_hub_config(None, {"web.listen": listen}), store).start()


@pytest.fixture
def web(store: Store, monkeypatch) -> Iterator[WebServer]:
    monkeypatch.delenv("BIRDD_HUB_TOKEN", raising=False)
    store.write(day_batch())
    server = start(store)
    yield server
    server.server.should_exit = True
    server._thread.join(5)
    server.sock.close()


def get(server: WebServer, path: str, auth: Optional[str] = None) -> Tuple[int, str]:
    request = urllib.request.Request(server.address + path)
    if auth:
        request.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8")


def get_json(server: WebServer, path: str) -> Dict[str, Any]:
    code, body = get(server, path)
    assert code == 200, body
    return dict(json.loads(body))


def test_species_stations_counts_where_a_species_was_heard(store):
    store.write(day_batch())
    where = store.species_stations("Turdus merula", since_ms=DAY.since_ms)
    assert [(s.station, s.detections) for s in where] == [("a", 12), ("b", 3)]
    assert where[1].first_ms == DAY.since_ms + 8 * HOUR
    assert where[1].last_ms == DAY.since_ms + 8 * HOUR + 2000
    assert [s.detections for s in store.species_stations("Turdus merula")] == [13, 3]
    assert store.species_stations("Nowhere nothing") == []


def test_stations_and_detections_with_filters_and_keyset_pages(web, store):
    stations = get_json(web, "/api/stations")["stations"]
    assert [s["id"] for s in stations] == ["a", "b"]
    assert stations[0]["status"] == "online" and stations[0]["stats"]["outbox_backlog"] == 2
    assert get(web, "/api/stations/nowhere")[0] == 404
    ids, before = [], ""
    while True:
        page = get_json(web, f"/api/detections?station=a&limit=5&before={before}")
        ids += [d["id"] for d in page["detections"]]
        if page["next"] is None:
            break
        before = page["next"]
    assert len(ids) == len(set(ids)) == 17
    assert set(ids) == {r.id for r in store.detections(DetectionQuery(station="a", limit=100))}
    since = api.iso(DAY.since_ms + 6 * HOUR)
    tits = get_json(web, f"/api/detections?species=Parus%20major&since={since}")["detections"]
    assert len(tits) == 4 and all(d["species"]["common"] == "Great Tit" for d in tits)
    code, body = get(web, "/api/detections?limit=5000")
    assert code == 400 and "from 1 to 1000" in body
    code, body = get(web, "/api/detections?colour=red")
    assert code == 400 and "unknown parameter 'colour'" in body


def test_csv_export_holds_every_matching_row(web, store):
    code, body = get(web, "/api/detections.csv?species=Turdus%20merula")
    rows = list(csv.reader(io.StringIO(body)))
    assert code == 200 and rows[0][:5] == ["id", "station", "start", "end", "scientific"]
    assert len(rows) - 1 == store.count_detections(DetectionQuery(species="Turdus merula")) == 16
    assert get(web, "/api/detections.csv?since=yesterday")[0] == 400


def test_a_stations_day_species_and_hourly_activity(web):
    day = get_json(web, f"/api/stations/a/day?day={DAY.day.isoformat()}")
    species = {s["scientific"]: s for s in day["species"]}
    assert species["Turdus merula"]["detections"] == 12  # yesterday's one is not today's
    assert species["Turdus merula"]["first"] == api.iso(DAY.since_ms + 5 * HOUR)
    assert species["Turdus merula"]["last"] == api.iso(DAY.since_ms + 5 * HOUR + 11 * 600_000)
    assert species["Parus major"]["detections"] == 4
    hourly = {s["scientific"]: s["counts"] for s in day["hourly"]["series"]}
    assert len(day["hourly"]["starts"]) in (23, 24, 25)
    assert hourly["Turdus merula"][5:7] == [6, 6] and sum(hourly["Turdus merula"]) == 12
    assert hourly["Parus major"][6] == 4 and sum(hourly["Parus major"]) == 4
    assert get(web, "/api/stations/a/day?day=15.05.2024")[0] == 400


def test_a_species_where_and_daily_counts_across_stations(web):
    found = get_json(web, "/api/species/Turdus%20merula?days=7")
    assert found["common"] == "Eurasian Blackbird"
    assert [(s["station"], s["detections"]) for s in found["stations"]] == [("a", 13), ("b", 3)]
    (daily,) = found["daily"]["series"]
    assert len(daily["counts"]) == 7 and daily["counts"][-2:] == [1, 15]
    summary = get_json(web, f"/api/species?since={DAY.since_ms}")["species"]
    assert [(s["scientific"], s["detections"], s["stations"]) for s in summary] == [
        ("Turdus merula", 15, 2),
        ("Parus major", 4, 1),
    ]
    assert get(web, "/api/species/Nothing%20here")[0] == 404


def test_openapi_schema_and_pages_escape_what_they_show(web):
    schema = get_json(web, "/api/openapi.json")
    for path in ("/api/stations", "/api/detections", "/api/species", "/api/detections.csv"):
        assert path in schema["paths"]
    code, html = get(web, "/species/" + urllib.request.quote(XSS, safe=""))
    assert code == 200 and XSS not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    code, html = get(web, "/stations/" + urllib.request.quote('a"><b>x', safe=""))
    assert code == 200 and '"><b>' not in html
    code, html = get(web, "/")
    assert code == 200 and "/static/vendor/chart.umd.min.js" in html
    assert get(web, "/static/vendor/chart.umd.min.js")[0] == 200


def test_a_token_guards_every_path_and_off_localhost_needs_one(tmp_path, monkeypatch):
    store = open_store(sqlite=tmp_path / "hub.sqlite")
    monkeypatch.delenv("BIRDD_HUB_TOKEN", raising=False)
    with pytest.raises(ValueError) as error:
        start(store, "0.0.0.0:0")
    assert "needs an access token" in str(error.value) and "\n" not in str(error.value)
    monkeypatch.setenv("BIRDD_HUB_TOKEN", "t0ken-for-tests")
    server = start(store, "0.0.0.0:0")
    server.address = server.address.replace("0.0.0.0", "127.0.0.1")
    try:
        for path in ("/api/stations", "/", "/static/hub.js"):
            assert get(server, path)[0] == 401
        assert get(server, "/api/stations", "Bearer wrong")[0] == 401
        assert get(server, "/api/stations", "Bearer t0ken-for-tests")[0] == 200
        basic = base64.b64encode(b"anyone:t0ken-for-tests").decode()
        assert get(server, "/", f"Basic {basic}")[0] == 200
    finally:
        server.stop()
