"""systemd's watchdog and the metrics endpoint on a real `birdd run`: a real notify socket
(the datagram socket systemd would own) with WATCHDOG_USEC and WATCHDOG_PID in the daemon's
environment, real audio on stdin, a real broker for the …/stats message the metrics must agree
with, and /metrics parsed by prometheus_client's own parser.

One run, in phases: audio flows (WATCHDOG=1 arrives every WatchdogSec/2, /healthz is 200);
the feeder stops without closing the pipe, a real stall (the pings stop within the stall time,
/healthz turns 503 naming stdin, and /metrics equals the …/stats message of the quiet
pipeline); audio flows again (the pings resume at once); the pipe closes (exit 0)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import soundfile
from birdd_testing import THRUSH, recording, run_birdd
from broker import Subscriber

prometheus_parser = pytest.importorskip("prometheus_client.parser")

WATCHDOG_S = 4.0  # WatchdogSec=4: pings every 2 s, a part stalled after 2 s
PING_EVERY_S = WATCHDOG_S / 2
STALL_S = WATCHDOG_S / 2
TICK_S = 0.25  # the monitor's pace
CHUNK_S = 3.0  # audio per write; one write every FEED_EVERY_S
FEED_EVERY_S = 0.75


class NotifySocket:
    """The datagram socket systemd listens on; every message with its arrival time."""

    def __init__(self) -> None:
        self.path = os.path.join(tempfile.mkdtemp(prefix="wd", dir="/tmp"), "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: List[Tuple[float, str]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            with self._lock:
                self.messages.append((time.monotonic(), data.decode()))

    def pings(self, since: float = 0.0, until: float = float("inf")) -> List[float]:
        with self._lock:
            return [
                at for at, text in self.messages if text == "WATCHDOG=1" and since <= at < until
            ]

    def wait_for(self, text: str, timeout: float, process: subprocess.Popen) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            with self._lock:
                if any(text in message for _, message in self.messages):
                    return
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} from birdd (exit {process.poll()}): {self.messages}")

    def close(self) -> None:
        self._closed.set()
        self._thread.join()
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(os.path.dirname(self.path))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(url: str) -> Tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def scrape(url: str) -> Dict[str, float]:
    """Every sample of /metrics by name and labels: ``name{a="x"}`` → value."""
    status, body = get(url)
    assert status == 200
    samples = {}
    for family in prometheus_parser.text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def pcm_chunks() -> Tuple[int, List[bytes]]:
    """The thrush recording as raw s16le PCM: its first 0.5 s (which fits in the pipe's
    buffer: birdd reads stdin's first bytes before it opens the run), then CHUNK_S pieces."""
    samples, rate = soundfile.read(str(recording(THRUSH)), dtype="int16")
    head, step = rate // 2, int(CHUNK_S * rate)
    rest = [samples[i : i + step].tobytes() for i in range(head, len(samples), step)]
    return rate, [samples[:head].tobytes(), *rest]


def feed(stdin, chunks: List[bytes]) -> float:
    """Write ``chunks`` FEED_EVERY_S apart; the time the last one was written."""
    for chunk in chunks:
        stdin.write(chunk)
        stdin.flush()
        time.sleep(FEED_EVERY_S)
    return time.monotonic() - FEED_EVERY_S


class Daemon:
    """`birdd run --config CONFIG` as systemd starts it under ``WatchdogSec=4``: the notify
    socket and WATCHDOG_USEC in its environment, WATCHDOG_PID its own pid (the shell's, which
    exec keeps), the first 0.5 s of audio already in its stdin."""

    def __init__(self, config: Path, first: bytes = b"") -> None:
        self.notify = NotifySocket()
        env = {
            **os.environ,
            "NOTIFY_SOCKET": self.notify.path,
            "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6)),
        }
        argv = [sys.executable, "-m", "birdd.daemon", "run", "--config", str(config)]
        self.process = subprocess.Popen(
            ["sh", "-c", 'export WATCHDOG_PID=$$; exec "$@"', "sh", *argv],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._stderr: List[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if first:
            self.process.stdin.write(first)
            self.process.stdin.flush()

    def _read(self) -> None:
        self._stderr.extend(self.process.stderr)

    @property
    def log(self) -> str:
        return b"".join(self._stderr).decode()

    def ready(self) -> float:
        self.notify.wait_for("READY=1", 60, self.process)
        return time.monotonic()

    def finish(self) -> int:
        """Close stdin (the end of the audio) and wait for the exit status."""
        self.process.stdin.close()
        return self.process.wait(60)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.notify.close()
        self._reader.join(5)
        print(self.log)  # shown when the test fails


def write_config(tmp_path: Path, rate: int, *extra: str) -> Path:
    config = tmp_path / "config.yaml"
    lines = [
        "station: {id: wd}",
        f"audio: {{inputs: ['-'], stdin: {{sample_rate: {rate}, channels: 1, format: s16le}}}}",
        f"storage: {{db: {tmp_path / 'db.sqlite'}}}",
        "output: {path: /dev/null}",
        *extra,
    ]
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config


def test_watchdog_pings_only_while_audio_flows_and_metrics_match_stats(
    broker, birdnet_model: Path, tmp_path: Path
) -> None:
    rate, chunks = pcm_chunks()
    port = free_port()
    mqtt = f"mqtt: {{enabled: true, host: 127.0.0.1, port: {broker.port}, stats_interval_s: 1}}"
    config = write_config(tmp_path, rate, mqtt, f"metrics: {{listen: '127.0.0.1:{port}'}}")
    base = f"http://127.0.0.1:{port}"
    daemon = Daemon(config, chunks[0])
    notify = daemon.notify
    try:
        with Subscriber(broker, "birdd/wd/stats") as stats_topic:
            flow_began = daemon.ready()
            stopped_at = feed(daemon.process.stdin, chunks[1:8])
            healthy = get(base + "/healthz")
            flowing = notify.pings(flow_began, stopped_at)
            time.sleep(STALL_S + 5.0)  # then a window longer than PING_EVERY_S
            stalled = get(base + "/healthz")
            late = notify.pings(stopped_at + STALL_S + 3 * TICK_S + 0.5)
            # The pipeline is quiet: a …/stats message and a scrape now see the same figures.
            message = _stats_after(stats_topic)
            metrics = scrape(base + "/metrics")
            resumed_at = time.monotonic()
            feed(daemon.process.stdin, chunks[8:])
            resumed = notify.pings(resumed_at)
        assert daemon.finish() == 0
    finally:
        daemon.close()
    log = daemon.log
    assert len(flowing) >= 2, (flowing, log)
    assert max(np.diff([flow_began, *flowing])) <= PING_EVERY_S + 2 * TICK_S, flowing
    assert healthy[0] == 200 and json.loads(healthy[1]) == {"status": "ok", "problems": []}
    assert late == [], (late, stopped_at, log)
    assert stalled[0] == 503, stalled
    assert json.loads(stalled[1])["problems"][0].startswith("stdin: no audio for ")
    assert "stalled: stdin: no audio for" in log and "the pipeline moves again" in log
    assert resumed and resumed[0] - resumed_at < FEED_EVERY_S + 2 * TICK_S, resumed
    assert any(text == "STOPPING=1" for _, text in notify.messages)
    _assert_same_figures(metrics, message)


def children(pid: int) -> List[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()]


def halves(chunk: bytes) -> List[bytes]:
    middle = len(chunk) // 4 * 2  # whole 16-bit samples
    return [chunk[:middle], chunk[middle:]]


def test_a_hung_engine_worker_stops_the_pings(birdnet_model: Path, tmp_path: Path) -> None:
    """The engine in a worker process (engine.python), frozen with SIGSTOP while audio keeps
    coming: the inference thread waits on it, the pings stop within the stall time although
    audio still arrives, and they come back as soon as the worker runs again (SIGCONT; well
    before the engine's own 30 s timeout would have replaced it)."""
    rate, chunks = pcm_chunks()
    config = write_config(tmp_path, rate, f"engine: {{type: tflite, python: {sys.executable}}}")
    daemon = Daemon(config, chunks[0])
    notify = daemon.notify
    try:
        flow_began = daemon.ready()
        (worker,) = children(daemon.process.pid)
        feed(daemon.process.stdin, chunks[1:5])
        os.kill(worker, signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            # Half chunks: the audio keeps coming for 7.5 s, until the worker runs again.
            feed(daemon.process.stdin, [half for chunk in chunks[5:10] for half in halves(chunk)])
            late = notify.pings(frozen_at + STALL_S + 3 * TICK_S + 0.5)
        finally:
            os.kill(worker, signal.SIGCONT)
        thawed_at = time.monotonic()
        time.sleep(2 * TICK_S + 0.5)
        resumed = notify.pings(thawed_at)
        assert daemon.finish() == 0
    finally:
        daemon.close()
    log = daemon.log
    assert notify.pings(flow_began, frozen_at), log
    assert late == [], (late, frozen_at, log)
    assert "stalled: inference: busy with one batch for" in log
    assert "stalled: stdin" not in log  # the audio kept coming
    assert resumed and resumed[0] - thawed_at < 2 * TICK_S + 0.5, (resumed, log)


def _stats_after(subscriber: Subscriber) -> dict:
    """The next …/stats message to arrive."""
    count = len(subscriber.messages)
    messages = subscriber.wait_for(lambda ms: len(ms) > count, timeout=5)
    return json.loads(messages[count].payload)


def _assert_same_figures(metrics: Dict[str, float], stats: dict) -> None:
    assert stats["windows"] >= 6 and stats["audio_seconds"] >= 21
    assert metrics["birdd_windows_total"] == stats["windows"]
    assert metrics["birdd_detections_total"] == stats["detections"] > 0
    assert metrics["birdd_audio_seconds_total"] == stats["audio_seconds"]
    assert metrics["birdd_gaps_total"] == stats["gaps"]["count"]
    assert metrics["birdd_overwritten_samples_total"] == stats["dropped"]["overwritten_samples"]
    assert metrics["birdd_outbox_backlog"] == stats["outbox_backlog"]
    assert metrics['birdd_queue_depth{queue="windows"}'] == stats["queue_depths"]["windows"] == 0
    assert metrics['birdd_info{station="wd",version="%s"}' % stats["version"]] == 1
    assert metrics["birdd_mqtt_connected"] == 1 and metrics["birdd_healthy"] == 0
    latency = stats["inference_latency_ms"]
    assert metrics['birdd_inference_latency_seconds{quantile="0.5"}'] == latency["p50"] / 1000


def test_a_camera_that_goes_down_is_a_gap_not_a_restart(
    rtsp_factory, birdnet_model: Path, tmp_path: Path
) -> None:
    """A network stream that dies is birdd's own business (reopened with backoff, recorded as
    a gap): the pings go on through the outage, as they do while it streams."""
    server = rtsp_factory(recording(THRUSH), loop=True)
    config = write_config(tmp_path, 48000)
    config.write_text(
        config.read_text().replace("inputs: ['-']", f"inputs: ['{server.url}']"), "utf-8"
    )
    daemon = Daemon(config)
    try:
        began = daemon.ready()
        time.sleep(3.0)
        server.kill()
        killed_at = time.monotonic()
        time.sleep(3 * WATCHDOG_S)  # past the input's own 5 s watchdog, into the backoff
        ended_at = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(30) == 0
    finally:
        daemon.close()
    pings = daemon.notify.pings(began, ended_at)
    assert f"{server.url} lost" in daemon.log and "stalled" not in daemon.log, daemon.log
    assert max(np.diff([began, *pings, ended_at])) <= PING_EVERY_S + 2 * TICK_S, pings
    assert len([at for at in pings if at > killed_at + 6.0]) >= 2, pings


def test_a_metrics_port_in_use_is_one_line_and_exit_1(birdnet_model: Path, tmp_path: Path) -> None:
    """Exit 1, not 2: the port may be free on systemd's next try."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, 32000, f"metrics: {{listen: '127.0.0.1:{port}'}}")
        result = run_birdd("run", "--config", str(config), input="\0" * 64000)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"birdd: error: metrics.listen 127.0.0.1:{port}: cannot listen there (Address already "
        "in use): pick a free port and an address of this machine, or unset metrics.listen"
    )
