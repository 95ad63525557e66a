"""Network streams and anything else ffmpeg reads (RTSP cameras, Icecast, SRT), as a child
process writing float32 PCM at the model's rate to a pipe.

ffmpeg ends the same way whether the server was killed or the stream ended (exit 0), and a
stalled server makes it hang unless a socket timeout is set; so every exit is "source lost",
the watchdog covers a hang, and the supervisor in ``live`` restarts it with backoff. ffmpeg
starts through the process's start gate (``startgate``): many inputs start a few at a time.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import shutil
import subprocess
import threading
import time
from abc import abstractmethod
from typing import Deque, List, Optional
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from birdd.daemon.sources.base import Block, SourceError
from birdd.daemon.sources.live import Connection, LiveSource, ReconnectPolicy
from birdd.daemon.sources.startgate import PROCESS_GATE, StartGate, StartSlot

URL_SCHEMES = ("rtsp", "rtsps", "http", "https", "srt", "rtmp", "rtmps", "udp", "rtp", "tcp")
BYTES_PER_SAMPLE = 4
PROBE_BYTES = "32768"
PROBE_MICROS = "1000000"
"""ffmpeg's defaults (5 MB, 5 s) read up to 5 s of a live stream before its first output: a
WAV stream's first audio came after 3 s unloaded, and past the 5 s watchdog on a busy machine.
An audio stream's parameters are in its header or first frames; 32 KB or 1 s is plenty, and
the first audio comes after 0.9 s."""


def is_url(text: str) -> bool:
    return urlsplit(text).scheme.lower() in URL_SCHEMES and "://" in text


def redacted(url: str) -> str:
    """The URL without a password, for logs, status and the detections' ``source`` field."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=user + host))


def ffmpeg_command(url: str, rate: int, channels: int, timeout_s: float) -> List[str]:
    scheme = urlsplit(url).scheme.lower()
    command = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-xerror"]
    micros = str(int(timeout_s * 1_000_000))
    if scheme in ("rtsp", "rtsps"):
        command += ["-rtsp_transport", "tcp", "-timeout", micros]
    else:
        command += ["-rw_timeout", micros]
    if scheme in ("http", "https"):
        command += ["-re"]  # a file on a web server would otherwise arrive faster than live
    command += ["-probesize", PROBE_BYTES, "-analyzeduration", PROBE_MICROS]
    command += ["-i", url, "-vn", "-f", "f32le", "-ac", str(channels), "-ar", str(rate), "pipe:1"]
    return command


class FfmpegConnection(Connection):
    """A running ffmpeg; its stdout is read without blocking longer than asked. It holds its
    start slot until the first audio arrives or it is closed."""

    def __init__(
        self, command: List[str], channels: int, rate: int, block_frames: int, slot: StartSlot
    ) -> None:
        self.channels, self.rate = channels, rate
        self._frame_bytes = channels * BYTES_PER_SAMPLE
        self._want = block_frames * self._frame_bytes
        self._pending = b""
        self._errors: Deque[str] = collections.deque(maxlen=5)
        self._slot = slot
        try:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except BaseException:
            slot.release()
            raise
        self._stderr = threading.Thread(target=self._keep_errors, daemon=True)
        self._stderr.start()

    def _keep_errors(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._errors.append(line.decode("utf-8", "replace").strip())

    def read(self, timeout: float) -> Optional[Block]:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return None
        data = os.read(fd, self._want)
        if not data:  # end of the pipe: ffmpeg is exiting; let lost() see its status
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
            return None
        self._slot.release()
        data = self._pending + data
        usable = len(data) - len(data) % self._frame_bytes
        self._pending = data[usable:]
        if usable == 0:
            return None
        samples = np.frombuffer(data[:usable], dtype="<f4").reshape(-1, self.channels)
        return Block(samples, time.time() - len(samples) / self.rate)

    def lost(self) -> Optional[str]:
        code = self.process.poll()
        if code is None:
            return None
        said = self._errors[-1] if self._errors else "no message"
        return f"ffmpeg exited with status {code} ({said})"

    def close(self) -> None:
        self._slot.release()
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


class StoppedConnection(Connection):
    """What ``connect`` returns when the source was stopped while it waited for a start slot:
    the supervisor sees the stop before it reads."""

    def read(self, timeout: float) -> Optional[Block]:
        return None


class NetworkSource(LiveSource):
    """A URL whose decoder (ffmpeg or PyAV) starts through the start gate; the name shown is
    the URL without its password."""

    def __init__(
        self,
        url: str,
        policy: ReconnectPolicy,
        block_s: float,
        rate: int,
        channels: int,
        gate: StartGate = PROCESS_GATE,
    ) -> None:
        super().__init__(redacted(url), policy)
        self.url, self.sample_rate, self.channels = url, rate, channels
        self._block_frames = max(1, int(block_s * rate))
        self._gate = gate
        self.check_decoder()

    @abstractmethod
    def check_decoder(self) -> None:
        """Raise ``SourceError`` (what to install) where this decoder cannot run."""

    def connect(self) -> Connection:
        """Start the decoder once a start slot is free; the supervisor starts its watchdog
        clock when this returns, so the wait for the slot is not counted as silence."""
        if not self._gate.enter(self._stop):
            return StoppedConnection()
        return self.start(StartSlot(self._gate))

    @abstractmethod
    def start(self, slot: StartSlot) -> Connection:
        """Start the decoder; the connection gives ``slot`` back on its first audio or end."""


class FfmpegSource(NetworkSource):
    """A URL read by an ffmpeg child process, restarted whenever it exits or stalls."""

    def check_decoder(self) -> None:
        if shutil.which("ffmpeg") is None:
            raise SourceError(f"{self.name} needs ffmpeg: apt install ffmpeg")

    def start(self, slot: StartSlot) -> Connection:
        command = ffmpeg_command(self.url, self.sample_rate, self.channels, self.policy.watchdog_s)
        return FfmpegConnection(command, self.channels, self.sample_rate, self._block_frames, slot)

    def describe(self) -> str:
        return f"receiving {self.name} through ffmpeg"
