"""The commands that parse their own arguments, each loaded only when it runs: ``birdd train``
needs torch and ``birdd hub`` psycopg (optional extras), and the rest load nothing the other
commands need. ``cli`` lists them in ``birdd --help`` and hands them the arguments after
their name."""

from __future__ import annotations

import argparse
import importlib
from typing import Callable, Optional, Sequence

OWN_PARSERS = {
    "hub": ("birdd.hub.cli", "the monitoring hub: birdd hub serve (birdd hub --help)"),
    "db": ("birdd.daemon.app.db", "check or back up the database: birdd db check|backup (--help)"),
    "doctor": (
        "birdd.daemon.app.doctor.cli",
        "check the station's setup and say how to fix it (birdd doctor --help)",
    ),
    "train": ("birdd.training.cli", "train a model on labelled recordings (birdd train --help)"),
}
"""Command → (module with ``main(argv) -> int``, its line in ``birdd --help``)."""


def own_main(argv: Sequence[str]) -> Optional[Callable[[Sequence[str]], int]]:
    """The ``main`` of the command ``argv`` starts with, when that command parses its own
    arguments; else None."""
    entry = OWN_PARSERS.get(argv[0]) if argv else None
    return importlib.import_module(entry[0]).main if entry else None


def add_own_parsers(command: Callable[..., argparse.ArgumentParser]) -> None:
    """One ``birdd --help`` line each; their arguments are parsed by their own ``main``."""
    for name, (_, text) in OWN_PARSERS.items():
        parser = command(name, help=text)
        parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
