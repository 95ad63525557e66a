"""``birdd db check`` and ``birdd db backup``: the station database's health and copies.

Exit codes: 0 sound (check) or copied (backup), 1 damaged or the copy failed, 2 bad input (a
flag, a missing database, an existing target without ``--force``). Both read the database
through read-only connections, so they are safe while the daemon writes.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from typing import Optional, Sequence

from birdd.daemon.app.settings import DEFAULT_CONFIG, config_from
from birdd.daemon.config import ConfigError
from birdd.daemon.store.sqlite_backup import BackupError, backup
from birdd.daemon.store.sqlite_health import integrity_findings

PROG = "birdd db"


class BadInput(ValueError):
    """Exit 2 with this one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="The station's SQLite database.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    check = commands.add_parser(
        "check", help="full integrity check; one line per problem, exit 1 when damaged"
    )
    _where(check)
    copy = commands.add_parser(
        "backup", help="a consistent, checked copy of the database, safe while birdd writes"
    )
    copy.add_argument("path", type=Path, metavar="PATH", help="where the copy goes")
    copy.add_argument("--force", action="store_true", help="replace PATH if it exists")
    _where(copy)
    return parser


def _where(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", type=Path, metavar="PATH", help="database (default: storage.db of the config)"
    )
    parser.add_argument(
        "--config",
        type=Path,
        help=f"YAML config (default: $BIRDD_CONFIG or {DEFAULT_CONFIG} when it exists)",
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        db = _database(args)
        return check(db) if args.command == "check" else copy(db, args.path, args.force)
    except ConfigError as exc:
        for line in exc.lines:
            print(f"birdd: config error: {line}", file=sys.stderr)
        return 2
    except BadInput as exc:
        print(f"birdd: error: {exc}", file=sys.stderr)
        return 2
    except (BackupError, sqlite3.Error) as exc:
        print(f"birdd: error: {exc}", file=sys.stderr)
        return 1


def _database(args: argparse.Namespace) -> Path:
    """``--db``, else the daemon's own database (the config's ``storage.db``); it must exist."""
    db = args.db if args.db is not None else config_from(args).storage.db
    if db.is_dir():
        raise BadInput(f"{db} is a directory; give the database file with --db")
    if not db.is_file():
        raise BadInput(f"{db}: no such database; give --db PATH or --config FILE")
    return db


def check(db: Path) -> int:
    """Print ``<db>: ok`` or one ``<db>: <problem>`` line per finding."""
    findings = integrity_findings(db)
    for finding in findings:
        print(f"{db}: {finding}")
    if findings:
        print(
            f"birdd: {db} is damaged; 'birdd run' moves it aside and starts a new one "
            "(see docs/deployment.md#backups-and-damaged-databases)",
            file=sys.stderr,
        )
        return 1
    print(f"{db}: ok")
    return 0


def copy(db: Path, target: Path, force: bool) -> int:
    if target.is_dir():
        raise BadInput(f"{target} is a directory; give a file name such as {target / db.name}")
    if not target.parent.is_dir():
        raise BadInput(f"{target.parent}: no such folder (is the backup disk mounted?)")
    if target.exists() and not force:
        raise BadInput(f"{target} exists; give --force to replace it")
    if target.resolve() == db.resolve():
        raise BadInput(f"{target} is the database itself; give another path")
    result = backup(db, target)
    print(
        f"{result.path}: {result.detections} detection(s), {result.bytes / 1e6:.1f} MB, "
        f"integrity ok (copied from {db} in {result.seconds:.1f} s)"
    )
    return 0
