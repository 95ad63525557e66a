"""The web server of ``birdd hub serve``: uvicorn in a thread on a socket bound up front (a busy
port or a bad address is a one-line error before the hub starts, and port 0 picks a free one)."""

from __future__ import annotations

import logging
import socket
import threading
from typing import Callable, Optional

import uvicorn

from birdd.hub.clipfiles import ClipFiles
from birdd.hub.config import HubConfig
from birdd.hub.store import Store
from birdd.hub.web.app import create_app
from birdd.hub.web.auth import TokenAuth, check_listen
from birdd.hub.web.clips import ClipService, is_upload

log = logging.getLogger("birdd")
STOP_WAIT_S = 5.0


def bind(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--listen {listen!r}: give HOST:PORT, e.g. 127.0.0.1:8640")
    host = host.strip("[]")
    try:
        family = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
    except OSError as exc:
        raise ValueError(f"--listen {listen}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class WebServer:
    """The dashboard and the API on ``config.web.listen``, reading through ``store``."""

    def __init__(self, config: HubConfig, store: Store) -> None:
        token = config.web.token()
        host = config.web.listen.rpartition(":")[0]
        check_listen(host, token, config.web.listen)
        self.store = store
        self.sock = bind(config.web.listen)
        port = self.sock.getsockname()[1]
        self.address = f"http://{host}:{port}"
        app = create_app(store, config.web.refresh_s, clip_service(config))
        served = TokenAuth(app, token, is_upload) if token else app
        settings = uvicorn.Config(
            served, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=30
        )
        self.server = uvicorn.Server(settings)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="hub web", daemon=True
        )
        self.protected = token is not None

    def start(self) -> WebServer:
        self._thread.start()
        guard = "with its token" if self.protected else "no token: localhost only"
        log.info(
            "hub: the dashboard at %s/ and the API under %s/api (%s)",
            self.address,
            self.address,
            guard,
        )
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(STOP_WAIT_S)
        self.sock.close()
        self.store.close()


def clip_service(config: HubConfig) -> ClipService:
    """The clips' folder, the stations' tokens (read now: a bad file stops the start) and
    the size limit."""
    clips = config.clips
    tokens = clips.tokens()
    try:
        if tokens:  # uploads on: the folder must be there (else only read, when it is)
            clips.dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"clips.dir {clips.dir}: cannot create it ({exc.strerror}); give a writable folder"
        ) from None
    return ClipService(ClipFiles(clips.dir), tokens, int(clips.max_mb * 1e6))


def start_web(config: HubConfig, opener: Callable[[], Store]) -> Optional[WebServer]:
    """The web server on ``config.web.listen`` with its own store connection."""
    store = opener()
    try:
        return WebServer(config, store).start()
    except BaseException:
        store.close()
        raise
