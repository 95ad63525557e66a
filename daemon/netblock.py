"""Tell a connection the station's own sandbox refused from one the network refused.

The systemd unit (deploy/systemd/birdd.service) allows only the loopback and the private LAN
(``IPAddressDeny=any`` + ``IPAddressAllow=``); its cgroup program fails ``connect()`` to any
other address with EPERM at once, which the network itself never answers. Without a word on
that, a broker or hub on the internet would look merely "unreachable" forever.
"""

from __future__ import annotations

import errno
from typing import Optional

SANDBOX_HINT = (
    "this machine refused the connection (EPERM): the systemd unit allows only the loopback "
    "and LAN addresses; add the address with IPAddressAllow= in a drop-in "
    "(`sudo systemctl edit birdd`, deploy/systemd/README.md)"
)


def blocked_here(error: Optional[BaseException]) -> bool:
    """True when ``error`` (or the OSError a URLError wraps) is a local EPERM refusal."""
    reason = getattr(error, "reason", None)
    if isinstance(reason, OSError):
        error = reason
    return isinstance(error, OSError) and error.errno in (errno.EPERM, errno.EACCES)
