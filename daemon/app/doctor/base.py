"""What every check returns and is given: a ``Result`` line and the ``Context`` it reads."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from birdd.daemon.config import BirddConfig

OK, WARN, FAIL = "ok", "warn", "FAIL"
"""A warning is worth knowing and does not stop a station; a failure does (exit 1)."""


@dataclass(frozen=True)
class Result:
    """One line of the report: ``status`` is OK, WARN or FAIL; ``fix`` is empty when ok."""

    status: str
    check: str
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Context:
    """What the checks read: the loaded config (None when it did not load) and the seconds of
    audio recorded from each sound device."""

    config: Optional[BirddConfig]
    config_path: Optional[Path]
    level_s: float = 2.0


Check = Callable[[Context], List[Result]]


def ok(check: str, detail: str) -> Result:
    return Result(OK, check, detail)


def warn(check: str, detail: str, fix: str) -> Result:
    return Result(WARN, check, detail, fix)


def fail(check: str, detail: str, fix: str) -> Result:
    return Result(FAIL, check, detail, fix)


def exit_code(results: Sequence[Result]) -> int:
    """1 when any check failed, else 0 (warnings included)."""
    return 1 if any(result.status == FAIL for result in results) else 0


def text_lines(results: Sequence[Result]) -> List[str]:
    """``status  check  detail — fix``, the first two columns aligned."""
    width = max((len(result.check) for result in results), default=0)
    lines = []
    for result in results:
        line = f"{result.status:<4}  {result.check:<{width}}  {result.detail}"
        lines.append(f"{line} — {result.fix}" if result.fix else line)
    return lines


def json_report(results: Sequence[Result]) -> str:
    """``{"ok": bool, "checks": [{"status", "check", "detail", "fix"}, …]}``."""
    body = {"ok": exit_code(results) == 0, "checks": [asdict(result) for result in results]}
    return json.dumps(body, indent=1)
