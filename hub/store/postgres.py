"""The production store: PostgreSQL (15 on Debian) through psycopg 3.

The DSN names the server and database (``host=… dbname=… user=…`` or
``postgresql://user@host:port/db``); the password never rides in it: it comes from the
environment or a credentials file (``hub.config.StoreConfig.password``), or libpq's own
``PGPASSWORD`` / ``~/.pgpass``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, List, Optional, Tuple

from birdd.hub.store import rollup, writes
from birdd.hub.store.base import StoreError, StoreUnavailable
from birdd.hub.store.sql import SqlStore

CONNECT_TIMEOUT_S = 5
MIGRATION_LOCK = 0x6269726464  # pg_advisory_xact_lock key: "birdd"
FATAL_LOGIN = (
    "password authentication failed",
    "does not exist",
    "no password supplied",
    "no pg_hba.conf entry",
)


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise StoreError("PostgreSQL needs psycopg 3: pip install 'birdd[hub]'") from None
    return psycopg


def check_dsn(dsn: str) -> dict:
    """The DSN's keys; ``StoreError`` when it does not parse or carries a password."""
    psycopg = _psycopg()
    try:
        keys = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise StoreError(
            f"--postgres: not a PostgreSQL DSN ({str(exc).splitlines()[0]}); use "
            "'host=HOST dbname=DB user=USER' or postgresql://USER@HOST:PORT/DB"
        ) from None
    if "password" in keys:
        raise StoreError(
            "--postgres: put no password in the DSN (it shows in ps and shell history); set "
            "BIRDD_POSTGRES_PASSWORD or store.password_file"
        )
    return dict(keys)


class PostgresStore(SqlStore):
    dialect = "postgres"

    def __init__(self, dsn: str, password: Optional[str] = None) -> None:
        self.keys = check_dsn(dsn)
        self.dsn, self.password = dsn, password
        where = f"{self.keys.get('host', 'localhost')}:{self.keys.get('port', 5432)}"
        self.where = f"PostgreSQL at {where}/{self.keys.get('dbname', '')}"
        super().__init__()

    def _connect(self) -> Any:
        psycopg = _psycopg()
        extra: dict = {"autocommit": True}
        if "connect_timeout" not in self.keys:
            extra["connect_timeout"] = CONNECT_TIMEOUT_S
        if self.password is not None:
            extra["password"] = self.password
        try:
            return psycopg.connect(self.dsn, **extra)
        except psycopg.OperationalError as exc:
            text = _first_line(exc)
            if any(marker in text for marker in FATAL_LOGIN):
                raise StoreError(f"{self.where}: {text}") from None
            raise StoreUnavailable(f"{self.where}: {text}") from None

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[None]:
        with self._conn.transaction():
            yield

    def _insert_detections(self, conn: Any, params: List[Tuple]) -> List[bool]:
        # one statement for the batch: an array per column (per row, even pipelined, psycopg
        # and the server spent more time than the rest of the ingest)
        returned = conn.execute(_binary(writes.INSERT_DETECTIONS), _columns(params))
        return writes.went_in([row[0] for row in params], {row[0] for row in returned})

    def _add_hours(self, conn: Any, rows: List[Tuple]) -> None:
        if rows:
            conn.execute(_binary(rollup.ADD_ALL), _columns(rows))

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s")

    def _lock_schema(self, conn: Any) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))

    def _translate(self, exc: Exception) -> Optional[Exception]:
        psycopg = _psycopg()
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            return StoreUnavailable(f"{self.where}: {_first_line(exc)}")
        if isinstance(exc, psycopg.Error):
            return StoreError(f"{self.where}: {_first_line(exc)}")
        return None


def _binary(statement: str) -> str:
    """``?`` as ``%b``: arrays travel in binary (psycopg writes a text array in Python, quoting
    each element: for a batch's payloads, slower than the rest of the write)."""
    return statement.replace("?", "%b")


def _columns(rows: List[Tuple]) -> List[List[Any]]:
    """Rows as one list per column: the arrays of an ``unnest`` statement."""
    return [list(column) for column in zip(*rows)]


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
