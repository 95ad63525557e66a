"""PyavSource on HTTP(S) streams from loopback servers started here: WAV and MP3 through the
process's one stream reader thread, the right samples at the model's rate, HTTP errors and
redirects, formats that fall back to a PyAV thread, HTTPS with a certificate the system trusts
(the reader) and one it does not (a PyAV thread, as before), a stream that ends and comes back
(a gap on the first block after it), and a stalled server caught by the watchdog."""

from __future__ import annotations

import logging
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, List

import numpy as np
import pytest
from birdd_testing import recording
from broker import make_certificates
from http_streams import StreamServer, wav_header
from test_http_audio import write_mp3

from birdd.daemon.sources.base import Block
from birdd.daemon.sources.httpaudio import tls_context
from birdd.daemon.sources.live import ReconnectPolicy
from birdd.daemon.sources.pyav import PyavSource

pytestmark = pytest.mark.system

AT_48K = "pykanto_audiomoth_20210502_040000.wav"
"""48 kHz: the server sends it as it is and the reader does not resample."""
POLICY = ReconnectPolicy(watchdog_s=2.0, reconnect_max_s=1.0)


class Running:
    """A source's supervisor loop on a thread of its own, its blocks collected."""

    def __init__(self, url: str) -> None:
        self.source = PyavSource(url, POLICY, 0.5, 48000, 1)
        self.blocks: List[Block] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for block in self.source.blocks():
            self.blocks.append(block)

    def wait(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < end, f"timed out; status: {self.source.status()}"
            time.sleep(0.05)

    def frames(self) -> int:
        return sum(len(block.samples) for block in self.blocks)

    def stop(self) -> None:
        self.source.stop()
        self._thread.join(5.0)
        assert not self._thread.is_alive()


class Routes:
    """A loopback HTTP server answering each path with its own handler function."""

    def __init__(self, routes: Dict[str, Callable[[BaseHTTPRequestHandler], None]]) -> None:
        self.hits: Dict[str, int] = {}
        self.stopping = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                routes[self.path](self)

            def log_message(self, *args: object) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


def send(handler: BaseHTTPRequestHandler, content_type: str, body: bytes) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", content_type)
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture(scope="module")
def wav_server():
    with StreamServer([recording(AT_48K)]) as server:
        yield server


def test_wav_stream_through_the_reader_with_the_recordings_samples(wav_server) -> None:
    running = Running(wav_server.url(0))
    try:
        began = time.monotonic()
        running.wait(lambda: running.frames() >= 3 * 48000)
        took = time.monotonic() - began
    finally:
        running.stop()
    assert running.source.describe().endswith("through the stream reader (wav)")
    assert all(block.samples.shape[1] == 1 for block in running.blocks)
    got = np.concatenate([block.samples[:, 0] for block in running.blocks])[: 3 * 48000]
    sent = np.frombuffer(wav_server.audio.chunk(0, 3 * 48000), "<i2") / 32768.0
    np.testing.assert_allclose(got, sent, atol=1 / 32768, rtol=0)
    assert took > 3.0 - 0.5 - 0.5 - 0.5, "faster than real time (less the head starts)"


def test_twenty_streams_share_one_reader_thread(wav_server) -> None:
    urls = [wav_server.url(index) for index in range(20)]
    sources = [Running(url) for url in urls]
    try:
        for running in sources:
            running.wait(lambda running=running: running.frames() >= 48000)
        names = [thread.name for thread in threading.enumerate()]
    finally:
        for running in sources:
            running.stop()
    assert names.count("stream reader") == 1
    assert not {f"pyav {url}" for url in urls} & set(names)
    assert all("stream reader (wav)" in running.source.describe() for running in sources)


@pytest.fixture(scope="module")
def routes(tmp_path_factory, wav_server):
    mp3 = write_mp3(tmp_path_factory.mktemp("mp3") / "thrush.mp3", 4.0).read_bytes()
    ogg = recording("Erithacus_rubecula_robin.ogg").read_bytes()
    table: Dict[str, Callable[[BaseHTTPRequestHandler], None]] = {}
    server = Routes(table)
    flaky = {"served": 0}

    def moved(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", wav_server.url(3))
        handler.end_headers()

    def ends_then_fails_then_serves(handler: BaseHTTPRequestHandler) -> None:
        flaky["served"] += 1
        if flaky["served"] == 2:
            handler.send_error(503)
            return
        send(handler, "audio/wav", wav_header(48000) + wav_server.audio.chunk(0, 2 * 48000))

    def stalls(handler: BaseHTTPRequestHandler) -> None:
        send(handler, "audio/wav", wav_header(48000))
        handler.wfile.flush()
        server.stopping.wait(30)

    table.update(
        {
            "/thrush.mp3": lambda handler: send(handler, "audio/mpeg", mp3),
            "/thrush.bin": lambda handler: send(handler, "application/octet-stream", mp3),
            "/robin.ogg": lambda handler: send(handler, "audio/ogg", ogg),
            "/page": lambda handler: send(handler, "text/html", b"<html><body>no</body></html>"),
            "/missing": lambda handler: handler.send_error(404),
            "/moved": moved,
            "/flaky": ends_then_fails_then_serves,
            "/stall": stalls,
        }
    )
    yield server
    server.close()


@pytest.mark.parametrize("path", ["/thrush.mp3", "/thrush.bin"])
def test_mp3_through_the_reader(routes: Routes, path: str) -> None:
    running = Running(routes.url(path))
    try:
        running.wait(lambda: running.frames() >= 2 * 48000)
    finally:
        running.stop()
    assert running.source.describe().endswith("through the stream reader (mp3)")
    level = np.sqrt(np.mean(np.concatenate([b.samples for b in running.blocks]) ** 2))
    assert level > 1e-3


def test_http_404_is_the_reason_and_retried(routes: Routes) -> None:
    running = Running(routes.url("/missing"))
    try:
        running.wait(lambda: routes.hits.get("/missing", 0) >= 2)
        status = running.source.status()
    finally:
        running.stop()
    assert status.startswith("waiting for") and "HTTP 404" in status, status
    assert running.blocks == []


@pytest.mark.parametrize(
    "path, through",
    [("/moved", "the stream reader (wav)"), ("/robin.ogg", "PyAV")],
    ids=["a redirect is followed", "Ogg falls back to a PyAV thread"],
)
def test_who_reads_the_stream(routes: Routes, path: str, through: str) -> None:
    running = Running(routes.url(path))
    try:
        running.wait(lambda: running.frames() >= 48000)
    finally:
        running.stop()
    assert running.source.describe().endswith(f"through {through}")


def test_html_falls_back_to_pyav_and_fails_with_its_reason(routes: Routes) -> None:
    running = Running(routes.url("/page"))
    try:
        running.wait(lambda: running.source.status().startswith("waiting for"))
        status = running.source.status()
    finally:
        running.stop()
    assert "PyAV" in status and running.blocks == [], status


def test_stream_that_ends_comes_back_after_a_gap(routes: Routes, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="birdd")
    running = Running(routes.url("/flaky"))
    try:
        running.wait(lambda: any(block.after_gap for block in running.blocks), timeout=15)
    finally:
        running.stop()
    assert "lost: the stream ended" in caplog.text
    gap = next(block.after_gap for block in running.blocks if block.after_gap)
    assert gap.reason == "the stream ended" and gap.seconds >= 0


def test_stalled_server_is_caught_by_the_watchdog(routes: Routes) -> None:
    running = Running(routes.url("/stall"))
    try:
        began = time.monotonic()
        running.wait(lambda: "no audio for 2 s" in running.source.status(), timeout=8)
        noticed = time.monotonic() - began
    finally:
        running.stop()
    assert noticed >= POLICY.watchdog_s
    assert running.blocks == []


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, wav_server):
    """``/live.wav`` over HTTPS, with a certificate signed by a test CA (``certs.ca_file``)."""
    certs = make_certificates(tmp_path_factory.mktemp("pki"))
    audio = wav_header(48000) + wav_server.audio.chunk(0, 4 * 48000)
    server = Routes({"/live.wav": lambda handler: send(handler, "audio/wav", audio)})
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certs.server_cert), str(certs.server_key))
    server.server.socket = context.wrap_socket(server.server.socket, server_side=True)
    yield server, certs
    server.close()


@pytest.fixture
def trusting(monkeypatch):
    """Make the process trust only the CA file given (the system's CA store for OpenSSL)."""

    def trust(ca_file) -> None:
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        tls_context.cache_clear()

    yield trust
    tls_context.cache_clear()


def test_https_with_a_trusted_certificate_through_the_reader(tls_server, wav_server, trusting):
    server, certs = tls_server
    trusting(certs.ca_file)
    running = Running(f"https://127.0.0.1:{server.server.server_address[1]}/live.wav")
    try:
        running.wait(lambda: running.frames() >= 2 * 48000)
    finally:
        running.stop()
    assert running.source.describe().endswith("through the stream reader (wav)")
    got = np.concatenate([block.samples[:, 0] for block in running.blocks])[: 2 * 48000]
    sent = np.frombuffer(wav_server.audio.chunk(0, 2 * 48000), "<i2") / 32768.0
    np.testing.assert_allclose(got, sent, atol=1 / 32768, rtol=0)


def test_https_with_a_certificate_not_trusted_keeps_a_pyav_thread(tls_server, trusting):
    server, certs = tls_server
    trusting(certs.other_ca_file)
    running = Running(f"https://127.0.0.1:{server.server.server_address[1]}/live.wav")
    try:
        running.wait(lambda: running.frames() >= 48000)
    finally:
        running.stop()
    assert running.source.describe().endswith("through PyAV")
