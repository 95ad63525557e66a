"""What ``birdd listen`` does with each message: decode, check against the schema, dedupe,
render, and report what it skips without letting a flood spam the terminal."""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, OrderedDict, TextIO

PROG = "birdd listen"
SCHEMA_PATH = Path(__file__).with_name("detection.v1.json")
MAX_PAYLOAD_BYTES = 64 * 1024
REPORT_BURST, REPORT_PER_S = 5, 1.0
SchemaCheck = Callable[[Any], Optional[str]]


class Skipped(Exception):
    """A message that is reported and skipped; the text says why."""


def load_schema_check() -> SchemaCheck:
    """``check(message)``: None when the message fits the schema, else where and why not.
    Raises ImportError without jsonschema or fastjsonschema (the hub extra: the stations never
    need them).

    Two validators. fastjsonschema's generated code (draft-07 keywords, all this schema uses)
    passes a valid message ~10x faster than jsonschema, which at ~0.7 ms a message capped the
    hub's ingest near 1,000 messages/s. A message it refuses goes to jsonschema, whose verdict
    and words count: the reasons stay the ones the tests and the rejected table know."""
    import fastjsonschema
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    validator = Draft202012Validator(schema)
    fast = fastjsonschema.compile(schema)

    def check(message: Any) -> Optional[str]:
        try:
            fast(message)
            return None
        except fastjsonschema.JsonSchemaException:
            pass
        error = best_match(validator.iter_errors(message))
        if error is None:
            return None
        return "/" + "/".join(map(str, error.absolute_path)) + ": " + error.message

    return check


def printable(text: str, limit: int = 200) -> str:
    """Escape control and format characters (terminal escapes, bidi overrides); cut long text."""
    safe = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text[: limit + 1])
    return safe if len(safe) <= limit else safe[:limit] + "…"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# one decoder for every message: ``json.loads`` with an option builds a new one each call
_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def decode_detection(payload: bytes, check: SchemaCheck) -> Dict[str, Any]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Skipped(f"{len(payload)} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit")
    try:
        text = payload.decode("utf-8")
        if text.startswith("\ufeff"):  # what json.loads says
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        message = _DECODER.decode(text)
    except UnicodeDecodeError:
        raise Skipped("not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:
        raise Skipped(f"not JSON ({printable(str(exc), 80)})") from None
    problem = check(message)
    if problem is not None:
        raise Skipped(f"fails {SCHEMA_PATH.name} at {printable(problem, 160)}")
    return message


def table_row(message: Dict[str, Any]) -> str:
    """``2024-05-02 04:00:15Z  garden  Dark-eyed Junco (Junco hyemalis)  0.80``"""
    start, species = message["start"], message["species"]
    name = printable(f"{species['common']} ({species['scientific']})")
    when = f"{start[:10]} {start[11:19]}Z"
    return f"{when}  {message['station']}  {name}  {message['confidence']:.2f}"


class Recent:
    """The last ``size`` keys with a value each: bounded memory whatever a flood brings."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, Any] = collections.OrderedDict()

    def put(self, key: str, value: Any = True) -> bool:
        """Remember ``key``; True when it is new or its value changed."""
        changed = key not in self._items or self._items[key] != value
        self._items[key] = value
        self._items.move_to_end(key)
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return changed


class SkipReport:
    """One stderr line per skipped message, a burst of 5 then 1 per second; the rest are
    counted and the count shows on the next line and at exit."""

    def __init__(self, err: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.err, self.clock = err, clock
        self.tokens, self.last, self.hidden = float(REPORT_BURST), clock(), 0

    def __call__(self, topic: str, reason: str) -> None:
        now = self.clock()
        self.tokens = min(REPORT_BURST, self.tokens + (now - self.last) * REPORT_PER_S)
        self.last = now
        if self.tokens < 1:
            self.hidden += 1
            return
        self.tokens -= 1
        more = f" (and {self.hidden} more not shown)" if self.hidden else ""
        self.hidden = 0
        line = f"{PROG}: skipped a message on {printable(topic, 120)}: {reason}{more}"
        print(line, file=self.err, flush=True)

    def close(self) -> None:
        if self.hidden:
            print(f"{PROG}: skipped {self.hidden} more messages", file=self.err, flush=True)
