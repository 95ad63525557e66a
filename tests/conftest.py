"""Shared fixtures: the recordings in tests/data/audio and, where a test needs them, in
../shared/audio (or $BIRDD_TEST_AUDIO; skipped without it), the installed BirdNET, real
mosquitto brokers on free loopback ports (see broker.py), and real audio servers: a private
PulseAudio daemon and GStreamer RTSP servers (see audio_servers.py).

Every test that needs the model, a Debian package the tests drive, a server or the shared
recordings, or that starts birdd (or vermin, mypy) in a fresh process, is marked ``system``:
by the fixtures it uses (``SYSTEM_FIXTURES``, below), else by its module's ``pytestmark`` or
its own mark. ``pytest -m "not system"`` is the fast tier for the edit loop; CI runs all."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, List

import pytest
from audio_servers import PulseServer, RtspServer
from birdd_testing import SHARED_AUDIO, SHARED_AUDIO_MISSING, shared_audio_present
from broker import Mosquitto
from postgres import Postgres, available, make_template

from birdd.engines.errors import ModelArtifactError
from birdd.engines.models.install import install_demo_recording
from birdd.engines.models.modeldir import resolve_model

INSTALL = "bash tests/install.sh"
# A test using one of these (directly or through another fixture) is a system test.
SYSTEM_FIXTURES = {
    "birdnet_model",
    "demo_recording",
    "shared_audio",
    "broker",
    "broker_factory",
    "pulse",
    "rtsp_factory",
    "postgres",
    "postgres_factory",
    "postgres_template",
}


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    for item in items:
        if SYSTEM_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.system)


@pytest.hookimpl(trylast=True)  # after the durations, just before the short summary
def pytest_terminal_summary(terminalreporter) -> None:
    """One line saying how many tests skipped for want of the shared recordings."""
    skipped = terminalreporter.stats.get("skipped", [])
    missing = [report for report in skipped if SHARED_AUDIO_MISSING in str(report.longrepr)]
    if missing:
        terminalreporter.write_line(
            f"{len(missing)} test(s) skipped without the shared recordings in {SHARED_AUDIO} "
            "(set BIRDD_TEST_AUDIO; CI has them)"
        )


@pytest.fixture(scope="session")
def shared_audio() -> Path:
    """The shared recordings' folder; the test skips, with the reason, when it is absent."""
    if not shared_audio_present():
        pytest.skip(SHARED_AUDIO_MISSING)
    return SHARED_AUDIO


@pytest.fixture(scope="session")
def birdnet_model() -> Path:
    """The installed BirdNET V2.4 TFLite classifier; its absence fails (the suite installs
    it: tests/install.sh), it never skips."""
    try:
        return resolve_model("birdnet", "tflite")
    except ModelArtifactError as exc:
        pytest.fail(f"BirdNET is not installed ({exc}); run '{INSTALL}'")


@pytest.fixture(scope="session")
def demo_recording() -> Path:
    """The README's demo recording: opensoundscape's birds_10s.wav (MIT) from its PyPI wheel,
    which tests/install.sh installs ('birdd models install demo'; fetched here if not)."""
    return install_demo_recording(log=lambda line: None)


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """``broker_factory(mode="plain"|"password"|"tls", require_certificate=False, start=True,
    persistent=False)`` makes a broker in its own folder; every one made is stopped when the
    test ends."""
    made: List[Mosquitto] = []

    def make(
        mode: str = "plain",
        require_certificate: bool = False,
        start: bool = True,
        persistent: bool = False,
    ):
        folder = tmp_path / f"broker-{len(made)}"
        broker = Mosquitto(folder, mode, require_certificate, persistent)
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


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[Path]:
    """An ``initdb``-ed PostgreSQL 15 cluster that each server copies; fails, naming what to
    install, when PostgreSQL is not there (tests/install.sh installs it)."""
    missing = available()
    if missing:
        pytest.fail(missing)
    folder = Path(tempfile.mkdtemp(prefix="birdd-pg-template-"))
    yield make_template(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_factory(postgres_template: Path) -> Iterator[Callable[..., Postgres]]:
    """``postgres_factory(start=True)``: a PostgreSQL server of its own (see postgres.py); the
    password is ``postgres.PASSWORD``. Every one made is removed when the test ends."""
    made: List[Postgres] = []

    def make(start: bool = True) -> Postgres:
        server = Postgres(postgres_template)
        made.append(server)
        return server.start() if start else server

    yield make
    for server in made:
        server.remove()


@pytest.fixture
def postgres(postgres_factory: Callable[..., Postgres]) -> Postgres:
    """A started PostgreSQL 15 server on 127.0.0.1 with an empty ``birdd`` database."""
    return postgres_factory()
