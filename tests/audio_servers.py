"""Real audio servers for the live-capture tests, on a machine without a sound card.

No mock anywhere:

* ``PulseServer`` runs a private PulseAudio daemon (user mode, its own runtime dir and HOME
  under the test's folder) with one null sink at 48 kHz mono float32. ``play()`` feeds a
  recording into the sink with ``paplay``; the sink's monitor is the default source, so a
  client with ``env`` sees it through PortAudio → ALSA → the ALSA ``pulse`` plugin as the
  ``pulse`` and ``default`` input devices, and captures the file sample for sample.
* ``RtspServer`` runs ``rtsp_server.py`` (GStreamer's RTSP server, under the system Python)
  serving a recording as 48 kHz mono L16 in real time, for ffmpeg to pull as a camera.

Both can crash (``kill()``), and the RTSP server can hang (``stall()``), so the tests can
watch birdd live through the outages a field station sees.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, FrozenSet, List, Optional

import numpy as np
import soundfile
from broker import end_process, free_port, wait_for_port

PULSEAUDIO = "/usr/bin/pulseaudio"
PACTL = "/usr/bin/pactl"
PAPLAY = "/usr/bin/paplay"
SYSTEM_PYTHON = "/usr/bin/python3"  # has python3-gi + GstRtspServer typelib; pyenv's doesn't
RTSP_SCRIPT = Path(__file__).resolve().parent / "rtsp_server.py"
RATE = 48000
SINK = "birdd_test"
START_TIMEOUT_S = 10.0
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with the NUL


def _tail(path: Path, lines: int = 30) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


@functools.lru_cache(maxsize=None)
def paplay_formats() -> FrozenSet[str]:
    """The libsndfile major formats this machine's paplay reads, as libsndfile names them
    ("WAV (Microsoft)", "MPEG-1/2 Audio", …): Debian 12's libsndfile 1.2 reads mp3 and
    ogg/opus, older ones (1.0.x) don't."""
    listing = subprocess.run(
        [PAPLAY, "--list-file-formats"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    return frozenset(
        line.split("\t", 1)[1].strip() for line in listing.splitlines() if "\t" in line
    )


def paplay_reads(path: Path) -> bool:
    """Whether paplay opens ``path`` itself, or it must be decoded first. True also when the
    soundfile package can't read it (nothing to decode with: paplay gets it and fails visibly)."""
    try:
        info = soundfile.info(str(path))
    except RuntimeError:  # soundfile.LibsndfileError
        return True
    return soundfile.available_formats().get(info.format) in paplay_formats()


class ChildServer:
    """A server run as our child process, logging to ``log_path``."""

    directory: Path
    log_path: Path
    _process: Optional[subprocess.Popen] = None

    def _spawn(self, command: List[str], env: Dict[str, str]) -> None:
        """Start ``command`` in ``directory``, stdout and stderr appended to ``log_path``."""
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.directory,
            )

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> Optional[int]:
        """Exact: the server runs in the foreground as our child."""
        return self._process.pid if self.running else None

    def kill(self) -> None:
        """SIGKILL, like a crash: clients lose it without a goodbye (a stalled one too)."""
        end_process(self._process, signal.SIGKILL)
        self._process = None

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)


class PulseServer(ChildServer):
    """A private PulseAudio daemon with one null sink whose monitor is the default source.

    Everything lives in ``directory``: the control socket, the daemon's ``runtime/`` and
    ``home/``, its log (spanning restarts), a client config and cookie. ``restart()`` keeps
    the socket path, so clients configured with ``env`` find the new daemon.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket_path = self.directory / "native"
        if len(os.fsencode(self.socket_path)) > SOCKET_PATH_MAX:
            raise ValueError(f"socket path too long for AF_UNIX: {self.socket_path}")
        self.runtime_dir = self.directory / "runtime"
        self.home = self.directory / "home"
        for folder in (self.runtime_dir, self.home):
            folder.mkdir(mode=0o700, exist_ok=True)
        self.log_path = self.directory / "pulseaudio.log"
        self.script_path = self._write_script()
        self.client_config = self.directory / "client.conf"
        self.client_config.write_text("autospawn = no\n")  # never start a stray user daemon
        self._process = None
        self._players: List[subprocess.Popen] = []

    def _write_script(self) -> Path:
        # norewinds=1 is essential: without it the first capture callback comes up to 2 s late
        # and that audio is lost.
        lines = [
            f"load-module module-native-protocol-unix socket={self.socket_path} auth-anonymous=1",
            f"load-module module-null-sink sink_name={SINK} rate={RATE} channels=1 "
            "format=float32le norewinds=1",
            f"set-default-sink {SINK}",
            f"set-default-source {SINK}.monitor",
        ]
        path = self.directory / "server.pa"
        path.write_text("\n".join(lines) + "\n")
        return path

    @property
    def variables(self) -> Dict[str, str]:
        """What a client process needs to reach this server and nothing else: not HOME (birdd
        finds its models under it) nor XDG_RUNTIME_DIR (unused with PULSE_SERVER). PULSE_COOKIE
        keeps libpulse from writing a cookie into the real HOME (the server takes anonymous
        clients), PULSE_CLIENTCONFIG turns autospawn off (no stray daemon while ours is down)."""
        return {
            "PULSE_SERVER": f"unix:{self.socket_path}",
            "PULSE_COOKIE": str(self.directory / "client-cookie"),
            "PULSE_CLIENTCONFIG": str(self.client_config),
        }

    @property
    def env(self) -> Dict[str, str]:
        """``os.environ`` with ``variables`` over it: pass as ``env=`` to a client process."""
        return {**os.environ, **self.variables}

    def start(self) -> PulseServer:
        """Start the daemon and wait until ``pactl info`` answers on the socket."""
        if self.running:
            return self
        daemon_env = {
            **os.environ,
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
        }
        for name in ("PULSE_SERVER", "PULSE_SINK", "PULSE_SOURCE", "PULSE_RUNTIME_PATH"):
            daemon_env.pop(name, None)
        command = [
            PULSEAUDIO,
            *("-n", "-F", str(self.script_path), "--daemonize=no", "--exit-idle-time=-1"),
            *("--use-pid-file=no", "--log-target=stderr", "--log-level=info", "--log-time=1"),
        ]
        self._spawn(command, daemon_env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.running:
            if self.pactl("info", check=False, timeout=2).returncode == 0:
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"pulseaudio did not answer on {self.socket_path}:\n{self.log_tail()}")

    def pactl(
        self, *args: str, check: bool = True, timeout: float = 10
    ) -> subprocess.CompletedProcess:
        """Run ``pactl`` against this server."""
        try:
            return subprocess.run(
                [PACTL, *args],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=check,
            )
        except subprocess.TimeoutExpired as error:
            if check:
                raise
            return subprocess.CompletedProcess(error.cmd, 124, "", "timed out")

    def play(self, path: Path) -> subprocess.Popen:
        """Play ``path`` into the null sink with paplay, in real time; returns the paplay
        process (it exits 0 at the end of the file; ``stop()`` ends any still playing). A file
        paplay can't read here is decoded by the soundfile package into a float wav first."""
        path = Path(path)
        if not paplay_reads(path):
            path = self._decode(path)
        number = len(self._players)
        with (self.directory / f"paplay-{number}.log").open("wb") as log:
            player = subprocess.Popen(
                [PAPLAY, f"--device={SINK}", str(path)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._players.append(player)
        return player

    def play_samples(self, samples: np.ndarray, connect_s: float = 1.0) -> float:
        """Play mono float32 samples at 48 kHz through ``paplay --raw`` from a pipe and return
        when (``time.time()``) the first byte was written. paplay is started and connected
        first, so the start is known to its buffering, not to a process launch (which can take
        hundreds of ms under load). Its buffer is 300 ms: a constant delay, which the tests
        estimate from the timestamps, where a 20 ms buffer ran dry on a loaded CI machine and
        PulseAudio's inserted silence shifted the rest of the recording against the windows.
        Blocks until the samples are played."""
        command = [PAPLAY, "--raw", "--format=float32le", f"--rate={RATE}", "--channels=1"]
        player = subprocess.Popen(
            [*command, f"--device={SINK}", "--latency-msec=300"],
            env=self.env,
            stdin=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._players.append(player)
        time.sleep(connect_s)
        assert player.stdin is not None
        started = time.time()
        player.stdin.write(np.ascontiguousarray(samples, dtype="<f4").tobytes())
        player.stdin.close()
        if player.wait(timeout=len(samples) / RATE + 30) != 0:
            raise RuntimeError(f"paplay --raw exited with status {player.returncode}")
        return started

    def _decode(self, path: Path) -> Path:
        """A float32 wav copy, same rate and channels (PulseAudio resamples as for any file)."""
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        target = self.directory / "decoded" / f"{len(self._players)}-{path.stem}.wav"
        target.parent.mkdir(exist_ok=True)
        soundfile.write(str(target), data, rate, subtype="FLOAT")
        return target

    def restart(self) -> PulseServer:
        """Stop (if still up) and start again on the same socket path."""
        self.stop(players=False)
        return self.start()

    def stop(self, players: bool = True) -> None:
        """SIGTERM the daemon (and, with ``players``, any paplay still playing). Idempotent."""
        if players:
            for player in self._players:
                end_process(player, signal.SIGTERM)
        end_process(self._process, signal.SIGTERM)
        self._process = None

    def __enter__(self) -> PulseServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class RtspServer(ChildServer):
    """``rtsp_server.py`` serving ``audio`` at ``url`` on a loopback port kept across restarts.

    Each connection gets its own stream from the start of the file (once, or forever with
    ``loop``), paced in real time. ``kill()`` is a crash (ffmpeg then exits 0, as at a normal
    end of stream); ``stall()`` freezes the server with the socket open (ffmpeg hangs unless
    it has ``-timeout``).
    """

    def __init__(
        self, directory: Path, audio: Path, loop: bool = False, mount: str = "/audio"
    ) -> None:
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.audio = Path(audio).resolve()
        self.loop = loop
        self.mount = mount if mount.startswith("/") else f"/{mount}"
        self.port = free_port()
        self.log_path = self.directory / "rtsp_server.log"
        self._process = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.mount}"

    def start(self) -> RtspServer:
        """Start the server (it decodes the file first) and wait until the port accepts."""
        if self.running:
            return self
        command = [SYSTEM_PYTHON, str(RTSP_SCRIPT), str(self.audio), "--port", str(self.port)]
        command += ["--mount", self.mount, *(["--loop"] if self.loop else [])]
        # The system Python must not pick up the test interpreter's packages.
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        self._spawn(command, env)
        if wait_for_port(self.port, lambda: self.running, START_TIMEOUT_S):
            return self
        self.kill()
        raise RuntimeError(f"RTSP server did not start on port {self.port}:\n{self.log_tail()}")

    def stall(self) -> None:
        """SIGSTOP: connections stay open, nothing more is sent or answered."""
        if self.running:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``stall()``."""
        if self.running:
            self._process.send_signal(signal.SIGCONT)

    def restart(self) -> RtspServer:
        """Stop (if still up) and start again on the same port and mount."""
        self.stop()
        return self.start()

    def stop(self) -> None:
        """Resume if stalled, SIGTERM, wait. Idempotent."""
        end_process(self._process, signal.SIGTERM)
        self._process = None

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
