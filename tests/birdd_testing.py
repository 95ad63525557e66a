"""Helpers shared by the test modules (on sys.path through pytest's ``pythonpath``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

REPO = Path(__file__).resolve().parent.parent
AUDIO = Path(os.environ.get("BIRDD_TEST_AUDIO", REPO.parent / "shared" / "audio"))


def birdd_command(*args: str) -> List[str]:
    """The command line that runs birdd with these arguments in a fresh process."""
    return [sys.executable, "-m", "birdd.daemon", *args]


def run_birdd(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run the installed command line exactly as a user would (a fresh process)."""
    return subprocess.run(
        birdd_command(*args), capture_output=True, text=True, timeout=timeout, **kwargs
    )


def simulate_args(recording: Path, db: Path, *flags: str) -> List[str]:
    """`--simulate RECORDING FLAGS… --per-window --format jsonl --db DB`: one JSON line per
    window and species on stdout."""
    per_window = ("--per-window", "--format", "jsonl", "--db", str(db))
    return ["--simulate", str(recording), *flags, *per_window]


def jsonl_rows(stdout: str) -> list:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def simulate_rows(
    recording: Path, db: Path, *flags: str
) -> Tuple[subprocess.CompletedProcess, list]:
    """Run ``simulate_args`` in a fresh process: the result and its detections as dicts."""
    result = run_birdd(*simulate_args(recording, db, *flags))
    return result, jsonl_rows(result.stdout)
