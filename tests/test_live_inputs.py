"""`birdd run` inputs that need no sound server: stdin (WAV and raw PCM), the ffmpeg command,
the watchdog's gaps, and the command line's refusals. Sound devices and RTSP streams are in
test_live_capture.py, against a real PulseAudio and a real RTSP server."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile
from birdd_testing import THRUSH, read_mono, recording, run_birdd
from broker import Subscriber

from birdd.daemon.sources.base import SourceError
from birdd.daemon.sources.ffmpeg import ffmpeg_command, is_url, redacted
from birdd.daemon.sources.stdin import PcmFormat, StdinSource

RAW = PcmFormat(48000, 1, "s16le")


def pipe_source(data: bytes, raw: PcmFormat = RAW, block_s: float = 0.5) -> StdinSource:
    """A StdinSource reading ``data`` from a real pipe, written by a thread as a producer
    would (the header arrives before the constructor returns)."""
    read_fd, write_fd = os.pipe()

    def produce() -> None:
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(data)

    threading.Thread(target=produce, daemon=True).start()
    return StdinSource(raw, block_s, os.fdopen(read_fd, "rb"))


def read_all(source: StdinSource) -> np.ndarray:
    return np.concatenate([block.samples for block in source.blocks()])


def wav_bytes(samples: np.ndarray, rate: int, subtype: str) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, subtype=subtype, format="WAV")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def thrush() -> np.ndarray:
    """3 s of the thrush recording at 48 kHz."""
    return read_mono(recording(THRUSH))[: 48000 * 3]


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32", "FLOAT"])
def test_wav_on_stdin_decodes_like_libsndfile(thrush: np.ndarray, subtype: str) -> None:
    stereo = np.stack([thrush, -thrush], axis=1)
    data = wav_bytes(stereo, 44100, subtype)
    expected, _ = soundfile.read(io.BytesIO(data), dtype="float32")
    source = pipe_source(data)
    assert (source.sample_rate, source.channels) == (44100, 2)
    np.testing.assert_array_equal(read_all(source), expected)


def test_streaming_wav_header_reads_to_the_end_of_the_pipe(thrush: np.ndarray) -> None:
    """arecord writes a placeholder data length when it streams to a pipe."""
    data = bytearray(wav_bytes(thrush, 48000, "PCM_16"))
    at = data.index(b"data") + 4
    data[at : at + 4] = (0x7FFFFFFF).to_bytes(4, "little")
    assert len(read_all(pipe_source(bytes(data)))) == len(thrush)


def test_raw_pcm_uses_the_configured_format(thrush: np.ndarray) -> None:
    pcm = (thrush * 32767).astype("<i2")
    source = pipe_source(pcm.tobytes() + b"\x01")  # an incomplete last frame is dropped
    decoded = read_all(source)
    assert source.sample_rate == 48000 and decoded.shape == (len(thrush), 1)
    np.testing.assert_allclose(decoded[:, 0], pcm / 32768, atol=1e-7)


def test_a_truncated_wav_header_is_one_clear_error() -> None:
    with pytest.raises(SourceError, match="stdin ended before the WAV"):
        pipe_source(b"RIFF\x24\x00\x00\x00WAVEfmt ")


def thrush_wav(tmp_path: Path) -> Path:
    """The thrush recording as a 16-bit WAV, what arecord would pipe (at 32 kHz)."""
    wav = tmp_path / "thrush.wav"
    samples, rate = soundfile.read(str(recording(THRUSH)), dtype="int16")
    soundfile.write(str(wav), samples, rate, subtype="PCM_16")
    return wav


def test_stdin_run_finds_what_simulate_finds(birdnet_model: Path, tmp_path: Path) -> None:
    """`arecord … | birdd run --input -` through the live pipeline: the same detections as
    `birdd --simulate` of the same recording (the stream starts at sample 0 in both)."""
    wav = thrush_wav(tmp_path)
    flags = ("--min-conf", "0.4", "--per-window", "--format", "jsonl")
    with wav.open("rb") as stdin:
        live = run_birdd("run", "--input", "-", *flags, "--db", str(tmp_path / "a.db"), stdin=stdin)
    simulated = run_birdd("--simulate", str(wav), *flags, "--db", str(tmp_path / "b.db"))
    assert live.returncode == 0, live.stderr
    assert simulated.returncode == 0, simulated.stderr

    def heard(stdout: str) -> list:
        rows = [json.loads(line) for line in stdout.splitlines() if line]
        return [(r["species"]["scientific"], r["offset_start"]) for r in rows]

    assert len(heard(live.stdout)) == 18  # as test_simulate's THRUSH_AT_04
    assert heard(live.stdout) == heard(simulated.stdout)
    runs = sqlite3.connect(str(tmp_path / "a.db")).execute("SELECT mode, status, source FROM runs")
    assert runs.fetchall() == [("live", "complete", "stdin")]


def test_a_source_that_never_comes_is_a_gap_in_sqlite(birdnet_model: Path, tmp_path: Path) -> None:
    """An RTSP camera that refuses connections for the whole (bounded) run: ffmpeg is retried
    with backoff, the run ends on time, the outage is one row in the gaps table, and a run
    that never got audio failed: exit 1 with ffmpeg's last reason."""
    db = tmp_path / "db.sqlite"
    result = run_birdd(
        "run", "--input", "rtsp://127.0.0.1:9/cam", "--duration", "3", "--db", str(db)
    )
    assert result.returncode == 1, result.stderr
    assert "waiting for rtsp://127.0.0.1:9/cam" in result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith(
        "birdd: error: no audio from any input: rtsp://127.0.0.1:9/cam: ffmpeg exited with status"
    ), result.stderr
    conn = sqlite3.connect(str(db))
    gaps = conn.execute("SELECT source, seconds, reason FROM gaps").fetchall()
    assert len(gaps) == 1 and gaps[0][0] == "rtsp://127.0.0.1:9/cam"
    assert 2.5 <= gaps[0][1] <= 4.0 and "ffmpeg exited" in gaps[0][2]
    assert conn.execute("SELECT status FROM runs").fetchall() == [("failed",)]


def test_ffmpeg_command_and_urls() -> None:
    command = ffmpeg_command("rtsp://cam.local/live", 48000, 1, 5.0)
    assert command[command.index("-rtsp_transport") + 1] == "tcp"
    assert command[command.index("-timeout") + 1] == "5000000"
    assert command[-7:] == ["-f", "f32le", "-ac", "1", "-ar", "48000", "pipe:1"]
    assert redacted("rtsp://admin:secret@cam.local:554/x") == "rtsp://admin@cam.local:554/x"
    assert is_url("srt://host:9000") and not is_url("USB Mic") and not is_url("-")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--duration", "0"], "--duration 0: give a number of seconds above 0"),
        (["--input", "ftp://host/x"], "is a URL ffmpeg is not asked to read here"),
        (["--input", "-", "--input", "-"], "stdin ('-') can be read once only"),
        (["--input", "rtsp://h/a", "--input", "rtsp://h/a"], "names one input twice"),
        (["--input", "rtsp://h/a", "--channel", "0,0"], "list of distinct indices"),
    ],
)
def test_bad_run_flags_are_one_line_and_exit_2(
    birdnet_model: Path, tmp_path: Path, args: list, message: str
) -> None:
    db = tmp_path / "db.sqlite"
    result = run_birdd("run", *args, "--db", str(db), stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not db.exists()


@pytest.mark.system  # PortAudio
def test_a_missing_device_with_require_device_at_start_exits_1(tmp_path: Path) -> None:
    """For systemd: exit 1 (restart me later) with one line naming the device, no run row."""
    config = tmp_path / "birdd.yaml"
    config.write_text("audio:\n  require_device_at_start: true\n")
    db = tmp_path / "db.sqlite"
    result = run_birdd("run", "--config", str(config), "--device", "NoSuchMic", "--db", str(db))
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("birdd: error")]
    assert len(lines) == 1 and "no input device 'NoSuchMic'" in lines[0]
    assert not db.exists()


@pytest.mark.system  # PortAudio
def test_devices_lists_or_says_there_are_none() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "birdd.daemon", "devices"], capture_output=True, text=True
    )
    assert result.returncode in (0, 1) and "Traceback" not in result.stderr
    assert "default rate" in result.stdout or "no input devices" in result.stderr


def test_run_with_mqtt_publishes_every_stored_detection_and_gap_stats(
    broker, birdnet_model: Path, tmp_path: Path
) -> None:
    """`birdd run --mqtt`: the live command publishes exactly the rows SQLite stores, and its
    stats carry each input's status."""
    wav = thrush_wav(tmp_path)
    db = tmp_path / "db.sqlite"
    with Subscriber(broker, "#") as everything, wav.open("rb") as stdin:
        result = run_birdd(
            *("run", "--input", "-", "--min-conf", "0.4", "--per-window", "--station", "field"),
            *("--db", str(db), "--mqtt", broker.url, "--output", "/dev/null"),
            stdin=stdin,
        )
        assert result.returncode == 0, result.stderr
        everything.wait_for(lambda ms: ms[-1].topic == "birdd/field/status", timeout=10)
        messages = everything.messages
    ids = [json.loads(m.payload)["id"] for m in messages if m.topic == "birdd/field/detections"]
    stored = sqlite3.connect(str(db)).execute(
        "SELECT id FROM detections WHERE published_at IS NOT NULL ORDER BY rowid"
    )
    assert ids == [row[0] for row in stored] and len(ids) == 18
    stats = [json.loads(m.payload) for m in messages if m.topic == "birdd/field/stats"]
    assert stats[-1]["sources"][0]["source"] == "stdin"
    assert stats[-1]["gaps"] == {"count": 0, "seconds": 0.0}


def test_under_systemd_it_says_ready_and_what_each_input_is_doing(
    birdnet_model: Path, tmp_path: Path
) -> None:
    """Type=notify: READY=1 once the run is open, then STATUS= lines systemctl status shows."""
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        listener.settimeout(0.1)
        env = {**os.environ, "NOTIFY_SOCKET": address}
        result = run_birdd(
            *("run", "--input", "rtsp://127.0.0.1:9/cam", "--duration", "3"),
            *("--db", str(tmp_path / "db.sqlite")),
            env=env,
        )
        messages = []
        with contextlib.suppress(socket.timeout):
            while True:
                messages.append(listener.recv(4096).decode())
    assert result.returncode == 1, result.stderr  # the camera never answered
    assert messages[0].startswith("READY=1\nSTATUS=")
    assert any("STATUS=waiting for rtsp://127.0.0.1:9/cam" in m for m in messages), messages
