"""Reading systemd unit files as systemd does (the tests' own parser: systemd-analyze checks
syntax, not what a key ends up holding)."""

from __future__ import annotations

from typing import Dict, List

Unit = Dict[str, Dict[str, List[str]]]


def parse_unit(text: str) -> Unit:
    """Sections → key → every value in order (systemd keys may repeat; an empty assignment
    resets the list, as systemd does). Comments and line continuations as systemd reads them."""
    unit: Unit = {}
    section = None
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        line, logical = logical + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert section is not None and sep, f"not 'key=value' in a section: {raw!r}"
        values = section.setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
    return unit
