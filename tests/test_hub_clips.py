"""Clip upload to the hub through the real web server (uvicorn on a free port) over a real
SQLite store (fast tier): the station's token, the size limit, the content check (each refusal
one line with the fix, nothing stored), stored once however often it is sent, a conflicting
clip refused, playback, the spectrogram rendered once, and the detections API naming the
clip's URLs. PostgreSQL's side runs in tests/test_clip_upload_system.py."""

from __future__ import annotations

import hashlib
import io
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import numpy as np
import pytest
import soundfile
from birdd_testing import THRUSH, recording

from birdd.hub.config import load_hub_config, parse_tokens
from birdd.hub.store import Batch, Store, open_store
from birdd.hub.store.base import NewDetection
from birdd.hub.web.server import WebServer

TOKEN = "s3cret-token-of-the-pond"
OTHER = "another-token-for-the-wood"
ID = "0123456789abcdef0123456789abcdef"


def flac(seconds: float = 1.0, rate: int = 48000, seed: int = 0) -> bytes:
    noise = np.random.default_rng(seed).normal(0, 0.1, int(seconds * rate)).astype(np.float32)
    out = io.BytesIO()
    soundfile.write(out, noise, rate, format="FLAC", subtype="PCM_16")
    return out.getvalue()


@pytest.fixture(params=[None], ids=["no hub token"])
def hub(request, tmp_path: Path, monkeypatch) -> Iterator[Tuple[WebServer, Store, Path]]:
    """The hub taking clips from 'pond' and 'wood'; ``request.param``: its own web token."""
    if request.param is None:
        monkeypatch.delenv("BIRDD_HUB_TOKEN", raising=False)
    else:
        monkeypatch.setenv("BIRDD_HUB_TOKEN", request.param)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# station token\npond {TOKEN}\nwood {OTHER}\n")
    overrides = {
        "web.listen": "127.0.0.1:0",
        "clips.dir": tmp_path / "clips",
        "clips.tokens_file": tokens,
        "clips.max_mb": 0.5,
    }
    store = open_store(tmp_path / "hub.sqlite")
    server = WebServer(load_hub_config(None, overrides), store).start()
    yield server, store, tmp_path / "clips"
    server.server.should_exit = True
    server._thread.join(5)
    store.close()


def put(
    server: WebServer,
    path: str,
    body: bytes,
    token: Optional[str] = TOKEN,
    headers: Optional[Dict[str, str]] = None,
) -> Tuple[int, Dict]:
    request = urllib.request.Request(server.address + path, data=body, method="PUT")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def get(server: WebServer, path: str) -> Tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(server.address + path, timeout=30) as answer:
            return answer.status, answer.headers["content-type"], answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["content-type"], error.read()


def test_a_clip_is_stored_once_however_often_it_is_sent(hub):
    server, store, folder = hub
    data = flac(2.0)
    digest = hashlib.sha256(data).hexdigest()
    code, first = put(server, f"/api/clips/pond/{ID}", data, headers={"X-Clip-SHA256": digest})
    assert code == 201 and first["result"] == "stored", first
    code, again = put(server, f"/api/clips/pond/{ID}", data)
    assert code == 200 and again["result"] == "already stored", again
    assert [p.name for p in folder.rglob("*.flac")] == [f"{digest}.flac"]
    row = store.clips([ID])[ID]
    assert (row.station, row.sha256, row.size, row.duration_s) == ("pond", digest, len(data), 2.0)
    status, kind, body = get(server, first["clip_url"])
    assert (status, kind) == (200, "audio/flac") and hashlib.sha256(body).hexdigest() == digest


def test_another_clip_for_a_stored_detection_is_a_conflict(hub):
    server, _, _ = hub
    assert put(server, f"/api/clips/pond/{ID}", flac(seed=1))[0] == 201
    code, answer = put(server, f"/api/clips/pond/{ID}", flac(seed=2))
    assert code == 409 and "already has another clip" in answer["error"]
    code, answer = put(server, f"/api/clips/wood/{ID}", flac(seed=1), token=OTHER)
    assert code == 409, answer


@pytest.mark.parametrize(
    "token, code, words",
    [
        (None, 401, "wrong or missing token"),
        (OTHER, 401, "wrong or missing token"),  # the wood's token cannot upload as the pond
        ("x" * 20, 401, "wrong or missing token"),
    ],
)
def test_uploads_need_the_station_s_own_token(hub, token, code, words):
    server, store, _ = hub
    answer = put(server, f"/api/clips/pond/{ID}", flac(), token=token)
    assert answer[0] == code and words in answer[1]["error"], answer
    assert store.clips([ID]) == {}


def test_a_station_without_a_line_in_the_tokens_file_is_refused(hub):
    server, _, _ = hub
    code, answer = put(server, f"/api/clips/meadow/{ID}", flac())
    assert code == 401 and "add it to clips.tokens_file" in answer["error"]


def test_bodies_the_hub_refuses_say_what_and_the_fix(hub):
    server, store, folder = hub
    wav = io.BytesIO()
    soundfile.write(wav, np.zeros(4800, np.float32), 48000, format="WAV")
    data = flac()
    refused = {
        b"": (400, "empty body"),
        b"not audio at all": (415, "not an audio file soundfile can open"),
        wav.getvalue(): (415, "a WAV file, not FLAC"),
        flac(seconds=8.0): (413, "larger than this hub's clips.max_mb (0.5 MB)"),
    }
    for body, (code, words) in refused.items():
        answer = put(server, f"/api/clips/pond/{ID}", body)
        assert answer[0] == code and words in answer[1]["error"], answer
        assert "\n" not in answer[1]["error"]
    cut = put(server, f"/api/clips/pond/{ID}", data[:-100], headers={"X-Clip-SHA256": "0" * 64})
    assert cut[0] == 400 and "send the clip again" in cut[1]["error"]
    bad_name = put(server, "/api/clips/pond/no%20spaces", data)
    assert bad_name[0] == 400 and "detection id" in bad_name[1]["error"]
    assert store.clips([ID]) == {} and not list(folder.rglob("*.flac"))


def test_the_spectrogram_is_a_png_rendered_once(hub):
    server, _, folder = hub
    audio, rate = soundfile.read(str(recording(THRUSH)), frames=96000)  # its first 3 s
    clip = io.BytesIO()
    soundfile.write(clip, audio, rate, format="FLAC")
    assert put(server, f"/api/clips/pond/{ID}", clip.getvalue())[0] == 201
    status, kind, png = get(server, f"/api/clips/pond/{ID}/spectrogram.png")
    assert (status, kind) == (200, "image/png") and png.startswith(b"\x89PNG\r\n\x1a\n")
    cached = next(folder.rglob("*.png"))
    stamp = cached.stat().st_mtime_ns
    assert get(server, f"/api/clips/pond/{ID}/spectrogram.png")[2] == png
    assert cached.stat().st_mtime_ns == stamp


def test_clips_of_unknown_detections_or_stations_are_404(hub):
    server, _, _ = hub
    assert put(server, f"/api/clips/pond/{ID}", flac())[0] == 201
    assert get(server, f"/api/clips/wood/{ID}")[0] == 404
    assert get(server, f"/api/clips/pond/{'f' * 32}/spectrogram.png")[0] == 404


def test_the_detections_api_names_the_clip_the_hub_holds(hub):
    server, store, _ = hub
    message = {"id": ID, "station": "pond", "clip": {"path": "/x.flac", "duration_s": 1.0}}
    row = NewDetection(
        ID,
        "pond",
        0,
        3000,
        "Turdus merula",
        "Blackbird",
        None,
        True,
        0.9,
        "mic",
        "mix",
        None,
        None,
        json.dumps(message),
        1,
    )
    store.write(Batch(detections=[row]))
    listed = json.loads(get(server, "/api/detections?station=pond")[2])["detections"][0]
    assert "clip_url" not in listed and listed["clip"]["path"] == "/x.flac"
    assert put(server, f"/api/clips/pond/{ID}", flac())[0] == 201
    listed = json.loads(get(server, "/api/detections?station=pond")[2])["detections"][0]
    assert listed["clip_url"] == f"/api/clips/pond/{ID}"
    assert listed["spectrogram_url"] == f"/api/clips/pond/{ID}/spectrogram.png"


def test_the_tokens_file_is_checked_line_by_line(tmp_path):
    path = tmp_path / "tokens"
    assert parse_tokens(f"pond {TOKEN}  # the pond\n\n", path) == {"pond": TOKEN}
    for text, words in [
        ("pond\n", "give 'STATION TOKEN'"),
        ("pond short\n", "openssl rand -hex 16"),
        (f"pond {TOKEN}\npond {OTHER}\n", "twice"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_tokens(text, path)


@pytest.mark.parametrize("hub", ["the-dashboard-token-0123"], indirect=True)
def test_behind_the_hub_s_token_uploads_take_the_station_s_and_playback_the_hub_s(hub):
    server, _, _ = hub
    assert put(server, f"/api/clips/pond/{ID}", flac())[0] == 201
    assert put(server, f"/api/clips/pond/{ID}", flac(), token="the-dashboard-token-0123")[0] == 401
    assert get(server, f"/api/clips/pond/{ID}")[0] == 401
    request = urllib.request.Request(server.address + f"/api/clips/pond/{ID}")
    request.add_header("Authorization", "Bearer the-dashboard-token-0123")
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.headers["content-type"] == "audio/flac"
