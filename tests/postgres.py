"""A real PostgreSQL server for the tests: Debian's ``initdb`` / ``pg_ctl`` on a free loopback
port, in a temporary data directory. No mock anywhere.

Run as root, the server runs as the unprivileged ``postgres`` user (``runuser``): PostgreSQL
refuses to run as root. The cluster's superuser is ``birdd`` with a password (scram over TCP),
so the hub's password path is the one production uses. ``initdb`` runs once per session into a
template that each server copies (``initdb`` takes seconds, a copy a fraction of one).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional

from broker import end_process, free_port, wait_for_port

BIN = Path(os.environ.get("BIRDD_PG_BIN", "/usr/lib/postgresql/15/bin"))
USER, PASSWORD, DATABASE = "birdd", "pg-s3cret-for-tests", "birdd"
START_TIMEOUT_S = 15.0
SERVER_USER = "postgres"
"""Who runs the server when the tests run as root."""


def available() -> Optional[str]:
    """None when initdb and pg_ctl are there, else what to install."""
    if not (BIN / "initdb").is_file() or not (BIN / "pg_ctl").is_file():
        return f"PostgreSQL 15 is not installed ({BIN}/initdb): bash tests/install.sh"
    return None


def _server_user() -> Dict[str, Any]:
    """``subprocess`` arguments that run a command as ``postgres`` when we are root (the
    process itself, no wrapper: a signal sent to it reaches the server)."""
    if os.geteuid() != 0:
        return {}
    return {"user": SERVER_USER, "group": SERVER_USER, "extra_groups": []}


def _give_to_server_user(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SERVER_USER)
        for folder, _, files in os.walk(path):
            os.chown(folder, entry.pw_uid, entry.pw_gid)
            for name in files:
                os.chown(os.path.join(folder, name), entry.pw_uid, entry.pw_gid)


def make_template(folder: Path) -> Path:
    """``initdb`` a cluster into ``folder/data`` (superuser ``birdd`` with ``PASSWORD``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pwfile").write_text(PASSWORD + "\n")
    _give_to_server_user(folder)
    data = folder / "data"
    command = [str(BIN / "initdb"), "-D", str(data), "-U", USER, "--pwfile", str(folder / "pwfile")]
    command += ["--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale"]
    command += ["--no-sync"]
    subprocess.run(command, check=True, capture_output=True, timeout=120, **_server_user())
    return data


class Postgres:
    """One PostgreSQL server on 127.0.0.1:``port``; ``restart()`` keeps its port and data."""

    def __init__(self, template: Path, workdir: Optional[Path] = None, fsync: bool = False) -> None:
        """``fsync``: commits reach the disk, as in production (the tests leave it off: they
        test behaviour, not speed; bench/hub.py turns it on)."""
        self.fsync = fsync
        # The server user must reach the folder: pytest's tmp_path is root's own (0700).
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="birdd-pg-"))
        self.data = self.workdir / "data"
        shutil.copytree(template, self.data, symlinks=True)
        self.socket_dir = self.workdir / "run"
        self.socket_dir.mkdir()
        self.log_path = self.workdir / "postgres.log"
        self.log_path.touch()
        _give_to_server_user(self.workdir)
        os.chmod(self.data, 0o700)
        self.port = free_port()
        self._process: Optional[subprocess.Popen] = None
        self._created = False

    @property
    def dsn(self) -> str:
        """Where the hub connects, without the password (it comes from the environment)."""
        return f"host=127.0.0.1 port={self.port} dbname={DATABASE} user={USER}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Postgres:
        """Start the server (the ``postgres`` binary itself, so SIGKILL reaches it) and wait
        until it accepts connections; the first start creates the ``birdd`` database."""
        if self.running:
            return self
        command = [str(BIN / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        command += [
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.socket_dir}",
        ]
        durable = "on" if self.fsync else "off"
        command += ["-c", f"fsync={durable}", "-c", f"full_page_writes={durable}"]
        command += ["-c", "max_connections=40"]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                **_server_user(),
            )
        process = self._process
        if not wait_for_port(self.port, lambda: process.poll() is None, START_TIMEOUT_S):
            self.kill()
            raise RuntimeError(f"PostgreSQL did not start on port {self.port}:\n{self.log_tail()}")
        self._wait_ready()
        if not self._created:
            self.psql(f"CREATE DATABASE {DATABASE}", database="postgres")
            self._created = True
        return self

    def _wait_ready(self) -> None:
        command = [str(BIN / "pg_isready"), "-h", str(self.socket_dir), "-p", str(self.port)]
        for _ in range(int(START_TIMEOUT_S / 0.05)):
            if subprocess.run(command, capture_output=True).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"PostgreSQL on port {self.port} never became ready:\n{self.log_tail()}")

    def psql(self, sql: str, database: str = DATABASE) -> str:
        """Run SQL through the local socket (trusted); its output, tab-separated."""
        command = [str(BIN / "psql"), "-h", str(self.socket_dir), "-p", str(self.port)]
        command += ["-U", USER, "-d", database, "-AtqX", "-F", "\t", "-c", sql]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"psql {sql!r}: {result.stderr.strip()}")
        return result.stdout

    def stop(self) -> None:
        """A fast shutdown (SIGINT): connections are cut, the data is kept."""
        process, self._process = self._process, None
        end_process(process, signal.SIGINT)

    def kill(self) -> None:
        process, self._process = self._process, None
        end_process(process, signal.SIGKILL)

    def restart(self) -> Postgres:
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)
