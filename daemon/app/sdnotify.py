"""systemd's notify protocol: READY=1 once the daemon listens, STATUS= with what it is doing.

Under ``Type=notify`` systemd sets ``$NOTIFY_SOCKET``; ``systemctl status birdd`` then shows
"active" only once the model is loaded and the sinks are open, and its ``Status:`` line says
what every input is doing ("capturing 'USB' …", "waiting for USB …"). Elsewhere this does
nothing. The protocol is one datagram per message on a unix socket (``@`` = abstract name).
"""

from __future__ import annotations

import os
import socket
from typing import Optional

ENV = "NOTIFY_SOCKET"


def notify(message: str) -> bool:
    """Send ``message`` (``READY=1``, ``STATUS=…``) to systemd; False when not under it or
    when the socket is gone (never raises: a status line must not stop the daemon)."""
    address: Optional[str] = os.environ.get(ENV)
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8", "replace"))
    except OSError:
        return False
    return True
