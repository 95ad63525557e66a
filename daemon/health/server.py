"""The optional HTTP endpoint (``metrics.listen``): ``/metrics`` in Prometheus' text format and
``/healthz``: 200 with ``{"status": "ok", …}`` while the liveness check holds (the one the
systemd watchdog uses), 503 with the stalled parts otherwise. Served by a small thread of its
own, so a stalled pipeline still answers (with 503)."""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Tuple

from birdd.daemon.health.liveness import Liveness
from birdd.daemon.health.prometheus import Fields, StatsCollector, import_prometheus
from birdd.daemon.sinks.base import SinkError

log = logging.getLogger("birdd")


class MetricsError(SinkError):
    """The endpoint cannot listen (the port is taken): exit 1, systemd retries later."""


class MetricsServer:
    def __init__(self, address: Tuple[str, int], fields: Fields, liveness: Liveness) -> None:
        prometheus = import_prometheus()
        self.address, self.liveness = address, liveness
        self.registry = prometheus.CollectorRegistry(auto_describe=False)
        self.registry.register(StatsCollector(fields, liveness))
        self._exposition = prometheus.exposition
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        host, port = self.address
        server_class = type(
            "Server",
            (ThreadingHTTPServer,),
            {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET},
        )
        try:
            self._httpd = server_class((host, port), self._handler())
        except OSError as exc:
            raise MetricsError(
                f"metrics.listen {host}:{port}: cannot listen there ({exc.strerror or exc}): "
                "pick a free port and an address of this machine, or unset metrics.listen"
            ) from None
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()
        log.info("metrics: http://%s:%d/metrics and /healthz", host, self.port)

    @property
    def port(self) -> int:
        """The bound port (the one asked for, or the one the kernel chose for port 0)."""
        assert self._httpd is not None
        return int(self._httpd.server_address[1])

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def _handler(self) -> Any:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body = server._exposition.generate_latest(server.registry)
                    self._reply(200, server._exposition.CONTENT_TYPE_LATEST, body)
                elif path == "/healthz":
                    verdict = server.liveness.check()
                    body = json.dumps(verdict.as_json()).encode("utf-8")
                    self._reply(200 if verdict.healthy else 503, "application/json", body)
                else:
                    self._reply(404, "text/plain", b"not found: try /metrics or /healthz\n")

            def _reply(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("metrics: " + format, *args)

        return Handler
