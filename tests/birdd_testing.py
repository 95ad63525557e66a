"""Helpers shared by the test modules (on sys.path through pytest's ``pythonpath``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
AUDIO = Path(os.environ.get("BIRDD_TEST_AUDIO", REPO.parent / "shared" / "audio"))


def run_birdd(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run the installed command line exactly as a user would (a fresh process)."""
    command = [sys.executable, "-m", "birdd.daemon", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
