"""``birdd doctor``: one line per check of a station's setup, a fix for each failure.

Exit codes: 0 every check passed (warnings allowed), 1 a check failed, 2 bad flags. The checks
read the same config ``birdd run`` reads; a config that does not load fails, and only the
checks that need no config run after it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from birdd.daemon.app.doctor import audio, broker, engine, system
from birdd.daemon.app.doctor.base import (
    Check,
    Context,
    Result,
    exit_code,
    fail,
    json_report,
    ok,
    text_lines,
)
from birdd.daemon.app.settings import DEFAULT_CONFIG, config_path
from birdd.daemon.config import BirddConfig, ConfigError, load_config

PROG = "birdd doctor"
CHECKS: Dict[str, Tuple[Check, bool]] = {
    "audio": (audio.check_audio, True),
    "runtimes": (engine.check_runtimes, False),
    "gpu": (engine.check_gpu, False),
    "model": (engine.check_model, True),
    "broker": (broker.check_broker, True),
    "disk": (system.check_disk, True),
    "clock": (system.check_clock, False),
    "state": (system.check_state, True),
}
"""Name → (check, whether it needs the config), in the order they run and print."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Check this station's setup: config, audio inputs and their level, engine "
        "runtimes, model, broker, disk, clock and state folder. Exit 1 when a check fails.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help=f"YAML config (default: $BIRDD_CONFIG or {DEFAULT_CONFIG} when it exists)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document for machines")
    parser.add_argument(
        "--skip",
        action="append",
        choices=sorted(CHECKS),
        default=[],
        metavar="CHECK",
        help=f"leave out a check ({', '.join(CHECKS)}); repeatable. 'audio' records 2 s from "
        "each device, which a running birdd may hold",
    )
    return parser


def check_config(path: Optional[Path]) -> Tuple[Result, Optional[BirddConfig]]:
    """(the config line, the loaded config or None)."""
    where = str(path) if path is not None else f"built-in defaults (no {DEFAULT_CONFIG})"
    try:
        config = load_config(path)
    except ConfigError as exc:
        more = f" (and {len(exc.lines) - 1} more)" if len(exc.lines) > 1 else ""
        fix = f"correct it: birdd check-config {path} lists every problem"
        return fail("config", f"{exc.source}: {exc.lines[0]}{more}", fix), None
    return ok("config", f"{where}: valid"), config


def run_checks(path: Optional[Path], skip: Sequence[str]) -> List[Result]:
    config_line, config = check_config(path)
    context = Context(config, path)
    results = [config_line]
    for name, (check, needs_config) in CHECKS.items():
        if name not in skip and (config is not None or not needs_config):
            results += check(context)
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    results = run_checks(config_path(args), args.skip)
    if args.json:
        print(json_report(results))
    else:
        print("\n".join(text_lines(results)))
    sys.stdout.flush()
    return exit_code(results)
