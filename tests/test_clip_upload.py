"""The station's clip upload outbox (fast tier): the queue in the detection rows (migration 5,
order, marks, the backlog), what each HTTP answer means, the disk budget keeping unsent clips
last, the config and token errors, and the uploader against the real hub (uvicorn on a free
port, SQLite): every clip stored once with its bytes, a refused body and a lost file marked
failed for good, a wrong token leaving the clips queued for the next run."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import threading
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pytest
import soundfile
from pydantic import ValidationError

from birdd.daemon.clips.budget import Budget, ClipFile, select
from birdd.daemon.clips.config import ClipsConfig, UploadConfig
from birdd.daemon.clips.privacy import ClipsError
from birdd.daemon.clips.upload import DONE, FAILED, RETRY, ClipUploader, classify, read_token
from birdd.daemon.records import ClipInfo, Detection, RunInfo
from birdd.daemon.store.sqlite_schema import MIGRATIONS
from birdd.daemon.store.sqlite_store import SQLiteStore
from birdd.daemon.store.sqlite_uploads import UploadStore
from birdd.engines.models.labels import Species
from birdd.hub.config import load_hub_config
from birdd.hub.store import Store, open_store
from birdd.hub.web.server import WebServer

START = datetime(2024, 5, 2, 4, 0, 0, tzinfo=timezone.utc)
ROBIN = Species("Turdus migratorius", "American Robin", "amerob", True)
TOKEN = "pond-upload-token-0123456789"


def write_clip(folder: Path, n: int, fmt: str = "FLAC") -> ClipInfo:
    noise = np.random.default_rng(n).normal(0, 0.1, 24000).astype(np.float32)
    out = io.BytesIO()
    soundfile.write(out, noise, 48000, format=fmt, subtype="PCM_16")
    path = folder / f"clip{n}.flac"
    path.write_bytes(out.getvalue())
    return ClipInfo(str(path), 0.5, hashlib.sha256(out.getvalue()).hexdigest())


def detection(n: int, clip: Optional[ClipInfo]) -> Detection:
    return Detection(
        id=f"{n:032x}",
        species=ROBIN,
        species_index=1,
        confidence=0.9,
        offset_start=3.0 * n,
        offset_end=3.0 * n + 3,
        start=START + timedelta(seconds=3 * n),
        end=START + timedelta(seconds=3 * n + 3),
        source="pond.wav",
        channel="mix",
        station="pond",
        model={"name": "m", "version": "1", "sha256": "0" * 64},
        clip=clip,
    )


def station_db(folder: Path, clips: int, without: int = 1) -> Tuple[Path, List[ClipInfo]]:
    """A detection database with ``clips`` detections that kept a clip and ``without`` that
    did not."""
    db = folder / "birdd.sqlite"
    written = [write_clip(folder, n) for n in range(clips)]
    rows = [detection(n, clip) for n, clip in enumerate(written)]
    rows += [detection(clips + n, None) for n in range(without)]
    run = RunInfo("run-1", "pond", "simulate", "pond.wav", START, "filename", {}, "{}")
    with SQLiteStore(db) as store:
        store.begin_run(run)
        store.add_detections("run-1", rows)
    return db, written


def test_the_queue_is_the_rows_with_a_clip_not_yet_sent(tmp_path):
    db, written = station_db(tmp_path, 3)
    with UploadStore(db) as store:
        unsent = store.unsent(0, 10)
        assert [c.path for c in unsent] == [c.path for c in written]
        assert [c.sha256 for c in unsent] == [c.sha256 for c in written]
        assert store.backlog() == 3
        store.mark_uploaded([unsent[0].rowid])
        store.mark_failed(unsent[1].rowid, "HTTP 415: not FLAC")
        assert [c.rowid for c in store.unsent(0, 10)] == [unsent[2].rowid]
        assert store.unsent_ids() == [unsent[2].detection_id] and store.backlog() == 1


def test_migration_5_takes_the_sha256_of_clips_kept_before(tmp_path):
    path = tmp_path / "old.sqlite"
    raw = sqlite3.connect(str(path))
    for migrate in MIGRATIONS[:4]:
        migrate(raw)
    raw.execute("PRAGMA user_version = 4")
    record = {"clip": {"path": "/c.flac", "duration_s": 1.0, "sha256": "ab" * 32}}
    raw.execute(
        "INSERT INTO runs (run_id, station, mode, source, started_at, clock_origin, config_json) "
        "VALUES ('r', 'pond', 'live', 'mic', 'x', 'clock', '{}')"
    )
    raw.execute(
        "INSERT INTO detections (id, run_id, station, source, channel, start_utc, start_epoch, "
        "end_utc, end_epoch, offset_start, offset_end, scientific, common, is_bird, "
        "confidence, windows, record_json, clip_path, clip_duration_s) VALUES ('d', 'r', "
        "'pond', 'mic', 'mix', 'x', 0, 'x', 1, 0, 1, 's', 'c', 1, 0.5, 1, ?, '/c.flac', 1.0)",
        (json.dumps(record),),
    )
    raw.commit()
    raw.close()
    with UploadStore(path) as store:
        assert store.schema_version == 5
        assert [(c.detection_id, c.sha256) for c in store.unsent(0, 10)] == [("d", "ab" * 32)]


@pytest.mark.parametrize(
    "status, kind",
    [
        *[(201, DONE), (200, DONE), (400, FAILED), (409, FAILED), (413, FAILED), (415, FAILED)],
        *[(401, RETRY), (403, RETRY), (404, RETRY), (429, RETRY), (500, RETRY), (503, RETRY)],
    ],
)
def test_what_each_answer_means_for_the_clip(status, kind):
    assert classify(status, "why").kind == kind


def clip_file(n: int, unsent: bool, start: float) -> ClipFile:
    return ClipFile(Path(f"/c/{n}.flac"), 100, start, "amerob", f"{n:032x}", 0.5, unsent)


def test_the_budget_deletes_unsent_clips_last_and_never_for_age():
    clips = [clip_file(0, True, 0.0), clip_file(1, False, 10.0), clip_file(2, False, 20.0)]
    by_size = select(clips, Budget(150, None, 10), now=1000.0, bytes_needed=0)
    assert [c.detection_id[-1] for c in by_size] == ["1", "2"]  # the oldest, unsent, stays
    by_age = select(clips, Budget(None, 5.0, 10), now=1000.0, bytes_needed=0)
    assert [c.detection_id[-1] for c in by_age] == ["1", "2"]
    floor = select(clips, Budget(None, None, 10), now=1000.0, bytes_needed=300)
    assert [c.detection_id[-1] for c in floor] == ["1", "2", "0"]  # the disk comes first
    sent = [replace(c, unsent=False) for c in clips]
    assert [c.detection_id[-1] for c in select(sent, Budget(150, None, 10), 1000.0, 0)] == [
        "0",
        "1",
    ]


def test_upload_settings_are_checked(tmp_path, monkeypatch):
    with pytest.raises(ValidationError, match="http://HOST:PORT"):
        UploadConfig(url="hub.example:8640")
    with pytest.raises(ValidationError, match="needs format: flac"):
        ClipsConfig(format="wav", upload={"url": "http://hub:8640"})
    monkeypatch.delenv("BIRDD_CLIP_TOKEN", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ClipsError, match="no upload token: set BIRDD_CLIP_TOKEN"):
        read_token(UploadConfig(url="http://hub:8640"))
    missing = tmp_path / "none"
    with pytest.raises(ClipsError, match="cannot read it"):
        read_token(UploadConfig(url="http://hub:8640", token_file=missing))
    (tmp_path / "token").write_text(f"{TOKEN}\n")
    assert read_token(UploadConfig(url="http://h:1", token_file=tmp_path / "token")) == TOKEN


@pytest.fixture
def hub(tmp_path: Path, monkeypatch) -> Iterator[Tuple[WebServer, Store]]:
    monkeypatch.delenv("BIRDD_HUB_TOKEN", raising=False)
    tokens = tmp_path / "hub-tokens"
    tokens.write_text(f"pond {TOKEN}\n")
    overrides = {
        "web.listen": "127.0.0.1:0",
        "clips.dir": tmp_path / "hub-clips",
        "clips.tokens_file": tokens,
    }
    store = open_store(tmp_path / "hub.sqlite")
    server = WebServer(load_hub_config(None, overrides), store).start()
    yield server, store
    server.server.should_exit = True
    server._thread.join(5)
    store.close()


def upload(
    db: Path, server: WebServer, token: str = TOKEN, drain_s: float = 20.0
) -> Dict[str, Any]:
    """One uploader's life: start, drain, stop; returns its last ``clip_uploads`` stats."""
    config = UploadConfig(url=server.address, retry_min_s=0.05, retry_max_s=0.2, timeout_s=5)
    uploader = ClipUploader(db, config, token)
    uploader.start()
    uploader.drain(drain_s, threading.Event())
    left = uploader.stop()
    uploads = uploader.stats()["clip_uploads"]
    assert uploads["waiting"] == left
    return uploads


def test_every_clip_reaches_the_hub_once_with_its_bytes(tmp_path, hub):
    server, store = hub
    db, written = station_db(tmp_path, 5)
    assert upload(db, server) == {"waiting": 0, "uploaded": 5, "failed": 0, "problem": None}
    held = store.clips([f"{n:032x}" for n in range(6)])
    assert sorted(held) == [f"{n:032x}" for n in range(5)]
    for n, clip in enumerate(written):
        assert held[f"{n:032x}"].sha256 == clip.sha256
        path = tmp_path / "hub-clips" / clip.sha256[:2] / f"{clip.sha256}.flac"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == clip.sha256
    with sqlite3.connect(str(db)) as conn:
        marked = conn.execute("SELECT COUNT(clip_uploaded_at) FROM detections").fetchone()[0]
    assert marked == 5
    # sent again (a lost answer, a copy of the database): stored once
    with sqlite3.connect(str(db)) as conn:
        conn.execute("UPDATE detections SET clip_uploaded_at = NULL")
    assert upload(db, server)["uploaded"] == 5
    assert len(list((tmp_path / "hub-clips").rglob("*.flac"))) == 5


def test_a_refused_clip_and_a_lost_file_fail_for_good_and_the_rest_go_on(tmp_path, hub):
    server, store = hub
    db, written = station_db(tmp_path, 3)
    wav = io.BytesIO()
    soundfile.write(wav, np.zeros(4800, np.float32), 48000, format="WAV")
    Path(written[0].path).write_bytes(wav.getvalue())
    Path(written[1].path).unlink()
    with sqlite3.connect(str(db)) as conn:  # the WAV's own hash, so the hub sees the body
        digest = hashlib.sha256(wav.getvalue()).hexdigest()
        conn.execute("UPDATE detections SET clip_sha256 = ? WHERE id = ?", (digest, f"{0:032x}"))
    assert upload(db, server) == {"waiting": 0, "uploaded": 1, "failed": 2, "problem": None}
    assert list(store.clips([f"{n:032x}" for n in range(3)])) == [f"{2:032x}"]
    with sqlite3.connect(str(db)) as conn:
        errors = [r[0] for r in conn.execute("SELECT clip_upload_error FROM detections")]
    assert "HTTP 415: a WAV file, not FLAC" in errors[0]
    assert "cannot be read" in errors[1] and errors[2] is None


def test_with_a_wrong_token_the_clips_wait_for_the_next_run(tmp_path, hub):
    server, store = hub
    db, _ = station_db(tmp_path, 2)
    refused = upload(db, server, token="not-the-pond-token-xxxx", drain_s=0.5)
    assert refused["waiting"] == 2 and refused["uploaded"] == 0
    assert "HTTP 401" in refused["problem"]
    assert store.clips([f"{n:032x}" for n in range(2)]) == {}
    assert upload(db, server)["waiting"] == 0
    assert len(store.clips([f"{n:032x}" for n in range(2)])) == 2
