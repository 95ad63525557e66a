"""A file output written under a temporary name and renamed when the run ends, so a failed run
leaves no half file (the text outputs of ``files.py`` and the Parquet file of ``parquet.py``)."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)


def temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def finish(path: Path, status: str, close: Callable[[], None]) -> None:
    """``close`` the temporary file, then rename it to ``path``, unless the run failed: then (or
    when closing or renaming fails) the temporary file is removed."""
    temporary = temporary_path(path)
    try:
        close()
        if status != "failed":  # an interrupted run keeps what it detected, as SQLite does
            os.replace(temporary, path)
            return
    except BaseException:
        remove(temporary)
        raise
    remove(temporary)
    log.info("%s not written: the run ended %s", path, status)


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
