"""A real local Ray cluster for the tests and bench/analyze.py: ``ray start --head`` on free
ports with a small object store, and every process it started ended at the end.

``ray stop`` is not used: it stops every Ray process of the user on the machine, other
clusters included. The head is started in a session of its own instead, and the teardown
ends that session's processes (the head's daemons and the workers its raylet started all
stay in it), SIGTERM first, then SIGKILL.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

from broker import free_port

TERM_GRACE_S = 2.0
"""How long SIGTERM gets: gcs_server and the autoscaler's monitor wait far longer for the
raylet gone before them; nothing of a test cluster needs a clean shutdown."""
KILL_TIMEOUT_S = 10.0


def ray_command() -> List[str]:
    """``ray`` of this interpreter (its workers import the birdd installed here)."""
    return [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]


class RayHead:
    """``with RayHead(cpus=2) as head:`` ... ``head.address`` is ``127.0.0.1:PORT``.

    Token authentication is off (``RAY_AUTH_MODE=disabled``, in ``env`` for the drivers too):
    the cluster listens on this machine only, and Ray 2.60 would otherwise turn it on
    whenever a ``~/.ray/auth_token`` exists, which a local ``ray.init()`` writes."""

    def __init__(self, cpus: int = 2, object_store_mb: int = 500) -> None:
        self.cpus, self.object_store_mb = cpus, object_store_mb
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Short: Ray's socket paths below it must fit in 107 bytes.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
        self.session: Optional[int] = None
        """The session id of the cluster's processes (that of ``ray start``)."""
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled"}

    def start(self) -> RayHead:
        command = [
            *ray_command(),
            "start",
            "--head",
            f"--port={self.port}",
            f"--num-cpus={self.cpus}",
            f"--object-store-memory={self.object_store_mb * 1_000_000}",
            f"--temp-dir={self.temp_dir}",
            "--include-dashboard=false",
            f"--dashboard-port={free_port()}",
            "--disable-usage-stats",
            "--node-ip-address=127.0.0.1",  # loopback only: nothing of a test leaves the machine
        ]
        starter = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            start_new_session=True,
        )
        self.session = starter.pid  # its session id: every process of the cluster has it
        output = starter.communicate(timeout=120)[0]
        if starter.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed ({starter.returncode}):\n{output[-2000:]}")
        return self

    def processes(self) -> List[int]:
        """The pids of the cluster's processes still running."""
        if self.session is None:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == self.session and fields[0] != "Z":
                found.append(int(entry.name))
        return found

    def stop(self) -> None:
        """End the cluster's processes and remove its temporary folder."""
        for sig, wait_s in ((signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, KILL_TIMEOUT_S)):
            for pid in self.processes():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    continue
            deadline = time.monotonic() + wait_s
            while self.processes() and time.monotonic() < deadline:
                time.sleep(0.1)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> RayHead:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
