"""The station tells its own sandbox's refusal (EPERM at connect) from a network failure."""

from __future__ import annotations

import errno
import socket
import urllib.error

from birdd.daemon.netblock import blocked_here


def test_eperm_from_connect_is_the_sandbox() -> None:
    assert blocked_here(PermissionError(errno.EPERM, "Operation not permitted"))


def test_eperm_inside_a_url_error_is_the_sandbox() -> None:
    wrapped = urllib.error.URLError(PermissionError(errno.EPERM, "Operation not permitted"))
    assert blocked_here(wrapped)


def test_a_real_refused_connection_is_the_network() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError as refused:
        assert not blocked_here(refused)
        assert not blocked_here(urllib.error.URLError(refused))
    else:
        raise AssertionError("a closed port accepted a connection")


def test_nothing_is_not_the_sandbox() -> None:
    assert not blocked_here(None)
    assert not blocked_here(ValueError("x"))
