"""The audio test servers work: a real recording played into PulseAudio comes out of
PortAudio (sounddevice) in a separate client process sample for sample, also after a daemon
crash and restart, and ffmpeg pulls a recording from the RTSP server unchanged but for 16-bit
quantization (L16 on the wire)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import pytest
import soundfile
from audio_servers import RATE, PulseServer, RtspServer
from birdd_testing import THRUSH, read_mono, recording, write_48k

SHORT_RECORDING = "pykanto_audiomoth_20210502_040000.wav"  # 0.98 s, 48 kHz mono
CAPTURE_S = 3.0
L16_STEP = 1 / 32768  # one quantization step of the RTSP stream

# A client process, as birdd's capture would be: sounddevice from the pyenv interpreter, with
# nothing but the server's environment to find it. It prints the devices PortAudio sees,
# "READY" once the stream runs, and saves what it captured as float32.
CAPTURE_SCRIPT = """
import sys, time
import numpy as np
import sounddevice as sd
device, seconds, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
print(sd.query_devices(), file=sys.stderr)
blocks = []
def callback(indata, frames, time_info, status):
    blocks.append(indata[:, 0].copy())
with sd.InputStream(device=device, samplerate=48000, channels=1, dtype="float32",
                    callback=callback):
    print("READY", flush=True)
    time.sleep(seconds)
np.save(out, np.concatenate(blocks) if blocks else np.zeros(0, np.float32))
"""


def start_capture(env: Dict[str, str], out: Path, device: str = "pulse") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CAPTURE_SCRIPT, device, str(CAPTURE_S), str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_ready(capture: subprocess.Popen) -> None:
    """Block until the client's stream runs (its first line), or fail with its stderr."""
    line = capture.stdout.readline()
    if line.strip() != "READY":
        capture.kill()
        pytest.fail(f"capture client did not start: {line!r}\n{capture.communicate()[1]}")


def finish(capture: subprocess.Popen, out: Path) -> np.ndarray:
    _, stderr = capture.communicate(timeout=CAPTURE_S + 10)
    assert capture.returncode == 0, stderr
    return np.load(out)


@pytest.fixture
def thrush_48k(tmp_path: Path) -> Path:
    """15 s of the thrush recording as a 48 kHz mono float WAV: played and served as it is."""
    return write_48k(recording(THRUSH), tmp_path / "thrush_48k.wav", seconds=15)


def locate(haystack: np.ndarray, needle: np.ndarray) -> int:
    """The offset in ``haystack`` where ``needle`` correlates best (FFT cross-correlation)."""
    size = 1 << (len(haystack) + len(needle)).bit_length()
    spectrum = np.fft.rfft(haystack, size) * np.conj(np.fft.rfft(needle, size))
    correlation = np.fft.irfft(spectrum, size)[: len(haystack) - len(needle) + 1]
    return int(np.argmax(correlation))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def capture_while_playing(pulse: PulseServer, recording: Path, out: Path) -> np.ndarray:
    """Start a client capture, play ``recording`` once it runs; return what it captured."""
    capture = start_capture(pulse.env, out)
    wait_ready(capture)
    pulse.play(recording)
    return finish(capture, out)


def assert_contains_recording(captured: np.ndarray, recording: np.ndarray) -> None:
    """The capture is silence, then the recording from its first sample, bit for bit."""
    assert len(captured) >= CAPTURE_S * RATE * 0.9, f"only {len(captured)} samples"
    start = locate(captured, recording[:RATE])
    heard = captured[start:]
    assert len(heard) >= 2 * RATE, f"playback began {start / RATE:.2f} s into the capture"
    np.testing.assert_array_equal(captured[:start], 0)  # nothing else went into the sink
    np.testing.assert_array_equal(heard, recording[: len(heard)])


def test_pulse_capture_is_the_played_recording(
    pulse: PulseServer, thrush_48k: Path, tmp_path: Path
) -> None:
    captured = capture_while_playing(pulse, thrush_48k, tmp_path / "captured.npy")
    assert_contains_recording(captured, read_mono(thrush_48k))


def test_pulse_default_device_and_mp3(pulse: PulseServer, thrush_48k: Path, tmp_path: Path) -> None:
    """The ALSA ``default`` device reaches the server too (while it runs: the plugin's hook
    checks), and an mp3 plays (paplay reads it here; else play() decodes it first): it
    matches soundfile's own decoding (libsndfile + mpg123 both)."""
    mp3 = tmp_path / "thrush.mp3"
    soundfile.write(str(mp3), read_mono(thrush_48k), RATE, format="MP3")
    out = tmp_path / "captured.npy"
    capture = start_capture(pulse.env, out, device="default")
    wait_ready(capture)
    pulse.play(mp3)
    captured = finish(capture, out)
    expected = read_mono(mp3)[: 2 * RATE]
    start = locate(captured, expected[:RATE])
    heard = captured[start : start + len(expected)]
    assert len(heard) == len(expected)
    assert correlation(heard, expected) > 0.999


def test_pulse_capture_after_kill_and_restart(
    pulse: PulseServer, thrush_48k: Path, tmp_path: Path
) -> None:
    old_pid = pulse.pid
    pulse.kill()
    assert not pulse.running and pulse.pactl("info", check=False).returncode != 0

    # Down: a fresh client can't open a stream. PortAudio, initialised while the server is
    # down, lists no device at all (sounddevice: "No input/output device matching"); a
    # process initialised before the crash gets PaErrorCode -9993 instead.
    down = start_capture(pulse.env, tmp_path / "down.npy")
    stdout, stderr = down.communicate(timeout=15)
    assert down.returncode != 0 and "READY" not in stdout, stderr

    pulse.restart()
    assert pulse.running and pulse.pid != old_pid
    captured = capture_while_playing(pulse, thrush_48k, tmp_path / "after.npy")
    assert_contains_recording(captured, read_mono(thrush_48k))


def ffmpeg(url: str, seconds: Optional[float] = None, timeout_s: float = 5) -> List[str]:
    """A camera client: ffmpeg over RTSP/TCP, 48 kHz mono float32 on stdout; ``timeout_s``
    without data ends it (without ``-timeout`` it waits forever on a stalled server)."""
    return [
        *("ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin"),
        *("-rtsp_transport", "tcp", "-timeout", str(int(timeout_s * 1e6)), "-xerror"),
        *("-i", url, *(["-t", str(seconds)] if seconds else [])),
        *("-f", "f32le", "-ar", str(RATE), "-ac", "1", "pipe:1"),
    ]


def pull(url: str, seconds: float) -> np.ndarray:
    """``seconds`` of the stream, as a client gets it."""
    result = subprocess.run(ffmpeg(url, seconds), capture_output=True, timeout=seconds + 15)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return np.frombuffer(result.stdout, dtype="<f4")


def test_rtsp_serves_the_recording_in_real_time(
    rtsp_factory: Callable[..., RtspServer], thrush_48k: Path
) -> None:
    server = rtsp_factory(thrush_48k)
    expected = read_mono(thrush_48k)
    for _ in range(2):  # a second connection gets a fresh stream from the start of the file
        began = time.monotonic()
        received = pull(server.url, CAPTURE_S)
        elapsed = time.monotonic() - began
        assert len(received) == CAPTURE_S * RATE
        assert elapsed >= CAPTURE_S * 0.9, f"{CAPTURE_S} s of audio came in {elapsed:.2f} s"
        assert correlation(received, expected[: len(received)]) > 0.9999
        np.testing.assert_allclose(received, expected[: len(received)], rtol=0, atol=L16_STEP)


def test_rtsp_loop_and_restart_after_kill(rtsp_factory: Callable[..., RtspServer]) -> None:
    short = recording(SHORT_RECORDING)
    server = rtsp_factory(short, loop=True)
    expected = np.tile(read_mono(short), 3)
    port = server.port
    server.kill()
    server.start()
    assert server.port == port
    received = pull(server.url, 2.5)  # the 0.98 s file two and a half times, seamlessly
    np.testing.assert_allclose(received, expected[: len(received)], rtol=0, atol=L16_STEP)


def test_rtsp_stall_and_kill_as_ffmpeg_sees_them(
    rtsp_factory: Callable[..., RtspServer], thrush_48k: Path
) -> None:
    """A stalled server makes ffmpeg give up after its ``-timeout`` (exit status 1); once
    resumed, a new connection works. A killed one ends ffmpeg like a normal end of stream."""
    server = rtsp_factory(thrush_48k)
    client = subprocess.Popen(
        ffmpeg(server.url, timeout_s=1.5), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    time.sleep(1)
    server.stall()
    began = time.monotonic()
    stdout, stderr = client.communicate(timeout=10)
    assert client.returncode == 1 and b"timed out" in stderr, stderr
    assert time.monotonic() - began < 4
    server.resume()
    assert len(pull(server.url, 0.5)) == RATE // 2

    client = subprocess.Popen(ffmpeg(server.url), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1)
    server.kill()
    stdout, stderr = client.communicate(timeout=10)
    assert client.returncode == 0, stderr
    assert 0.5 * RATE < len(stdout) / 4 < 1.5 * RATE
