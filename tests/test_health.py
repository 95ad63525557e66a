"""The health parts that need no model: reading systemd's watchdog settings, the ping pace,
and the ``metrics.listen`` setting's validation (the endpoint itself, the liveness check and
the pings against a real pipeline: test_watchdog_system.py)."""

from __future__ import annotations

import pytest

from birdd.daemon.app.health import Watchdog, watchdog_interval_s
from birdd.daemon.config import ConfigError, load_config


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, None),
        ({"WATCHDOG_USEC": "60000000"}, 60.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "4242"}, 60.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}, None),  # another process's
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval_is_read_as_sd_watchdog_enabled_does(environ, expected) -> None:
    assert watchdog_interval_s(environ, pid=4242) == expected


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pings_every_half_interval_while_healthy_and_at_once_after_a_stall() -> None:
    clock = Clock()
    sent: list = []
    watchdog = Watchdog(4.0, lambda message: sent.append(clock.now) or True, clock)
    for _ in range(17):  # 4 s of ticks, healthy
        watchdog.tick(True)
        clock.now += 0.25
    assert sent == [100.0, 102.0, 104.0]
    for _ in range(20):  # 5 s stalled: nothing
        watchdog.tick(False)
        clock.now += 0.25
    assert sent[-1] == 104.0
    watchdog.tick(True)  # moving again: at once, not 2 s later
    assert sent[-1] == clock.now


@pytest.mark.parametrize("listen", ["127.0.0.1:9101", "[::1]:9101", "0.0.0.0:1", "station:65535"])
def test_metrics_listen_takes_host_and_port(listen: str) -> None:
    config = load_config(None, {"metrics.listen": listen})
    assert config.metrics.address is not None and config.metrics.address[1] == int(
        listen.rsplit(":", 1)[1]
    )


def test_metrics_are_off_by_default() -> None:
    assert load_config(None).metrics.address is None


@pytest.mark.parametrize("listen", ["9101", "127.0.0.1:", ":9101", "127.0.0.1:99999", "a:b"])
def test_a_bad_metrics_listen_is_one_line_naming_the_form(listen: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, {"metrics.listen": listen})
    (line,) = error.value.lines
    assert line.startswith("metrics.listen | ") and "e.g. 127.0.0.1:9101" in line
