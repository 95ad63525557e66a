"""Shared fixtures: the real recordings in ../shared/audio (or $BIRDD_TEST_AUDIO), real
mosquitto brokers on free loopback ports (see broker.py), and real audio servers: a private
PulseAudio daemon and GStreamer RTSP servers (see audio_servers.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, List

import pytest
from audio_servers import PulseServer, RtspServer
from birdd_testing import AUDIO
from broker import Mosquitto


@pytest.fixture(scope="session")
def audio_dir() -> Path:
    if not (AUDIO / "soundscapes").is_dir():
        pytest.fail(f"test recordings not found in {AUDIO}: set BIRDD_TEST_AUDIO")
    return AUDIO


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """``broker_factory(mode="plain"|"password"|"tls", require_certificate=False, start=True)``
    makes a broker in its own folder; every one made is stopped when the test ends."""
    made: List[Mosquitto] = []

    def make(mode: str = "plain", require_certificate: bool = False, start: bool = True):
        broker = Mosquitto(tmp_path / f"broker-{len(made)}", mode, require_certificate)
        made.append(broker)
        return broker.start() if start else broker

    yield make
    for broker in made:
        broker.stop()


@pytest.fixture
def broker(broker_factory: Callable[..., Mosquitto]) -> Mosquitto:
    """A started plain (anonymous) broker on 127.0.0.1."""
    return broker_factory("plain")


@pytest.fixture
def pulse(tmp_path: Path) -> Iterator[PulseServer]:
    """A started private PulseAudio server (null sink, its monitor the default source); give
    a client process ``env=pulse.env``. Stopped, with any paplay still playing, at test end."""
    server = PulseServer(tmp_path / "pulse").start()
    yield server
    server.stop()


@pytest.fixture
def rtsp_factory(tmp_path: Path) -> Iterator[Callable[..., RtspServer]]:
    """``rtsp_factory(audio, loop=False, start=True)`` makes an RTSP server for ``audio`` in
    its own folder (``.url`` to pull it); every one made is stopped when the test ends."""
    made: List[RtspServer] = []

    def make(audio: Path, loop: bool = False, start: bool = True) -> RtspServer:
        server = RtspServer(tmp_path / f"rtsp-{len(made)}", audio, loop=loop)
        made.append(server)
        return server.start() if start else server

    yield make
    for server in made:
        server.stop()
