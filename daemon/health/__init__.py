"""Is the daemon alive, and how is it doing: the one liveness definition that the systemd
watchdog and ``/healthz`` share, and the optional Prometheus endpoint."""
