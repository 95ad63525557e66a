"""``birdd run``'s health: the liveness check four times a second, systemd's watchdog pinged
only while it holds, and the optional metrics endpoint (``metrics.listen``).

Under ``WatchdogSec=`` systemd sets ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``, the process meant);
birdd then sends ``WATCHDOG=1`` every ``WatchdogSec/2`` while the pipeline is alive, and calls a
part stalled after ``WatchdogSec/2`` without progress. A stalled pipeline stops the pings and
systemd restarts birdd at most ``WatchdogSec`` after the last one.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Callable, Mapping, Optional

from birdd.daemon.app.sdnotify import notify
from birdd.daemon.config import BirddConfig
from birdd.daemon.health.liveness import DEFAULT_STALL_S, Liveness, Verdict
from birdd.daemon.health.server import MetricsServer
from birdd.daemon.mqtt.service import MqttPublisher
from birdd.daemon.mqtt.stats import station_stats
from birdd.daemon.pipeline.chain import Pipeline

log = logging.getLogger("birdd")


def watchdog_interval_s(
    environ: Mapping[str, str] = os.environ, pid: Optional[int] = None
) -> Optional[float]:
    """``WatchdogSec=`` in seconds as systemd passes it; None when there is no watchdog, or it
    is meant for another process (``WATCHDOG_PID``, as sd_watchdog_enabled reads it)."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 1e6


class Watchdog:
    """``WATCHDOG=1`` every ``interval_s / 2`` while healthy, and at once when the pipeline
    moves again after a stall (so a late recovery still beats systemd's deadline)."""

    def __init__(
        self,
        interval_s: float,
        send: Callable[[str], bool] = notify,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ping_every_s = interval_s / 2
        self._send, self._clock = send, clock
        self._pinged_at: Optional[float] = None
        self._healthy = True

    def tick(self, healthy: bool) -> None:
        now = self._clock()
        due = (
            self._pinged_at is None
            or not self._healthy
            or now - self._pinged_at >= self.ping_every_s
        )
        self._healthy = healthy
        if healthy and due:
            self._send("WATCHDOG=1")
            self._pinged_at = now


class RunHealth:
    """What ``LiveMonitor`` calls on every tick; ``close`` says STOPPING=1 and stops the
    endpoint."""

    def __init__(
        self,
        pipeline: Pipeline,
        config: BirddConfig,
        publisher: Optional[MqttPublisher],
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        interval = watchdog_interval_s(environ)
        self.pipeline = pipeline
        self.liveness = Liveness(pipeline, interval / 2 if interval else DEFAULT_STALL_S)
        self.watchdog = Watchdog(interval) if interval else None
        self.server: Optional[MetricsServer] = None
        address = config.metrics.address
        if address is not None:
            fields = (
                functools.partial(publisher.stats, pipeline.health)
                if publisher is not None
                else functools.partial(
                    station_stats,
                    config.station.id,
                    time.monotonic(),
                    pipeline.health,
                    config.storage.db,
                )
            )
            self.server = MetricsServer(address, fields, self.liveness)
        self._stalled = False
        self._stopping = False

    def start(self) -> None:
        if self.server is not None:
            self.server.start()

    def tick(self) -> None:
        if self._stopping:
            return
        if self.pipeline.stop_event.is_set():
            self._say_stopping()
            return
        verdict = self.liveness.check()
        self._log_change(verdict)
        if self.watchdog is not None:
            self.watchdog.tick(verdict.healthy)

    def close(self) -> None:
        self._say_stopping()
        if self.server is not None:
            self.server.stop()

    def _say_stopping(self) -> None:
        if not self._stopping:
            self._stopping = True
            notify("STOPPING=1")

    def _log_change(self, verdict: Verdict) -> None:
        if not verdict.healthy and not self._stalled:
            restart = "; systemd's watchdog will restart birdd" if self.watchdog else ""
            log.error("stalled: %s%s", "; ".join(verdict.problems), restart)
        elif verdict.healthy and self._stalled:
            log.warning("the pipeline moves again")
        self._stalled = not verdict.healthy
