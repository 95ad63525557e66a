"""The hub's database: one schema, two backends (SQLite embedded, PostgreSQL 15 via psycopg 3)
behind the ``Store`` interface in ``base``; ``open_store`` picks one."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from birdd.hub.store.base import (
    Batch,
    DetectionQuery,
    DetectionRow,
    SpeciesCount,
    StationRow,
    Store,
    StoreError,
    StoreUnavailable,
)

__all__ = [
    "Batch",
    "DetectionQuery",
    "DetectionRow",
    "SpeciesCount",
    "StationRow",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "open_store",
]


def open_store(
    sqlite: Optional[Path] = None, postgres: Optional[str] = None, password: Optional[str] = None
) -> Store:
    """The PostgreSQL store for a DSN, else the SQLite store at ``sqlite``; migrated to the
    newest schema. Raises ``StoreError`` (bad path, bad DSN) or ``StoreUnavailable`` (the
    server does not answer: worth retrying)."""
    if postgres is not None:
        from birdd.hub.store.postgres import PostgresStore

        return PostgresStore(postgres, password)
    if sqlite is None:
        raise StoreError("give a SQLite path or a PostgreSQL DSN")
    from birdd.hub.store.sqlite import SqliteStore

    return SqliteStore(sqlite)
