"""``birdd hub serve``: the store, the ingest, the clips' budget and (when there is one) the
web server, together.

The web server (``hub.web.server.start_web``: the dashboard and the HTTP API) and the clips'
budget (``hub.clipbudget``) use the same store through connections of their own.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Optional

from birdd.daemon.mqtt.messages import load_schema_check
from birdd.daemon.retry import Backoff
from birdd.hub.clipbudget import ClipKeeper
from birdd.hub.config import HubConfig
from birdd.hub.ingest import Received, Session, Writer
from birdd.hub.store import Store, StoreUnavailable, open_store

log = logging.getLogger("birdd")

STORE_WAIT_MIN_S, STORE_WAIT_MAX_S = 0.5, 30.0


def store_opener(config: HubConfig) -> Callable[[], Store]:
    """Opens the configured store (PostgreSQL when a DSN is set, else SQLite)."""
    store = config.store

    def opener() -> Store:
        if store.postgres is not None:
            return open_store(postgres=store.postgres, password=store.password())
        return open_store(sqlite=store.sqlite)

    return opener


def open_when_ready(opener: Callable[[], Store], stop: threading.Event) -> Optional[Store]:
    """The store, waiting with backoff while the server is down (one line per new problem);
    None when ``stop`` is set first. A ``StoreError`` (bad DSN, login) is raised at once."""
    backoff, said = Backoff(STORE_WAIT_MIN_S, STORE_WAIT_MAX_S), ""
    while not stop.is_set():
        try:
            return opener()
        except StoreUnavailable as exc:
            if str(exc) != said:
                said = str(exc)
                log.warning("hub: the database: %s; retrying with backoff", exc)
            stop.wait(backoff.next())
    return None


def serve(config: HubConfig, stop: threading.Event, web: bool = True) -> int:
    """Run until ``stop`` is set; 0 after a clean stop."""
    check = load_schema_check()  # ImportError without jsonschema: the caller says what to do
    opener = store_opener(config)
    store = open_when_ready(opener, stop)
    if store is None:
        return 0
    log.info("hub: storing into %s", config.store.postgres or config.store.sqlite)
    inbox: queue.SimpleQueue[Received] = queue.SimpleQueue()
    session = Session(config, inbox)
    writer = Writer(store, session, inbox, check, config.ingest)
    server = _start_web(config, opener) if web else None
    keeper = ClipKeeper(opener, config.clips)
    writer.start()
    session.start()
    keeper.start()
    began = time.monotonic()
    stop.wait()
    session.stop()
    writer.stop()
    keeper.stop()
    if server is not None:
        server.stop()
    store.close()
    log.info(
        "hub: wrote %d detection message(s) (re-sends included), kept %d rejected in %.0f s",
        writer.stored,
        writer.rejected,
        time.monotonic() - began,
    )
    return 0


def _start_web(config: HubConfig, opener: Callable[[], Store]):  # type: ignore[no-untyped-def]
    from birdd.hub.web.server import start_web

    return start_web(config, opener)
