"""``birdd listen``: the monitoring hub's reference subscriber to ``<prefix>/detections``.

It prints each detection once (stations re-send after outages: dedupe by ``id``), checks every
message against ``detection.v1.json`` and survives whatever else arrives: payloads that are
not JSON, fail the schema or are huge are reported on stderr, rate-limited, and skipped. A
broker that is down, refuses us or fails TLS gives one line per new problem and a retry with
capped backoff. Single-threaded: paho's network loop runs in this thread, callbacks included.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Optional, TextIO, Tuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from birdd.daemon.mqtt.client import apply_credentials
from birdd.daemon.mqtt.config import MqttConfig, parse_mqtt_url
from birdd.daemon.mqtt.messages import (
    PROG,
    Recent,
    SchemaCheck,
    Skipped,
    SkipReport,
    decode_detection,
    load_schema_check,
    printable,
    table_row,
)
from birdd.daemon.retry import Backoff

REMEMBERED_IDS, REMEMBERED_STATIONS = 100_000, 10_000
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 30.0
STATION = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mqtt",
        required=True,
        metavar="URL",
        help="mqtt[s]://[user@]host[:port][/prefix]; the password comes from $BIRDD_MQTT_PASSWORD",
    )
    parser.add_argument("--station", help="only this station (default: all, birdd/+)")
    parser.add_argument("--format", choices=("table", "jsonl"), default="table")
    parser.add_argument("--count", type=_positive(int), help="exit 0 after N distinct detections")
    parser.add_argument(
        "--timeout",
        type=_positive(float),
        metavar="S",
        help="exit after S seconds: 1 if it never connected or --count was not reached",
    )
    parser.add_argument("--status", action="store_true", help="also print status changes")
    parser.add_argument("--ca-file", type=Path, help="CA certificate for mqtts:// (PEM)")
    parser.add_argument("--cert-file", type=Path, help="client certificate for mutual TLS")
    parser.add_argument("--key-file", type=Path, help="client private key for mutual TLS")


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text}: give a number above 0")
        return value

    return parse


class Listener:
    """Prints what arrives: detections once per id, status changes; stops at ``count``."""

    def __init__(self, args: argparse.Namespace, check: SchemaCheck, out: TextIO) -> None:
        self.jsonl, self.count = args.format == "jsonl", args.count
        self.check, self.out = check, out
        self.seen, self.statuses = Recent(REMEMBERED_IDS), Recent(REMEMBERED_STATIONS)
        self.skip = SkipReport(sys.stderr)
        self.printed = 0

    @property
    def done(self) -> bool:
        return self.count is not None and self.printed >= self.count

    def _print(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def on_detection(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self.done:
            return
        try:
            message = decode_detection(bytes(msg.payload), self.check)
        except Skipped as skipped:
            self.skip(msg.topic, str(skipped))
            return
        if self.seen.put(message["id"]):
            self._print(json.dumps(message) if self.jsonl else table_row(message))
            self.printed += 1

    def on_status(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        status = msg.payload.decode("ascii", "replace") if len(msg.payload) < 16 else ""
        if status not in ("online", "offline"):
            self.skip(msg.topic, "a status is 'online' or 'offline'")
        elif self.statuses.put(msg.topic, status) and not self.done:
            station = printable(msg.topic.split("/")[-2])
            if self.jsonl:
                fields = {"topic": msg.topic, "status": status, "retained": bool(msg.retain)}
                self._print(json.dumps(fields))
            else:
                now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
                retained = " (retained)" if msg.retain else ""
                self._print(f"{now}  {station}  status {status}{retained}")


def _describe(exc: OSError) -> str:
    verify = getattr(exc, "verify_message", None)  # ssl.SSLCertVerificationError
    if verify:
        return f"TLS certificate check failed: {verify}"
    reason = getattr(exc, "reason", None)  # other ssl.SSLError
    return f"TLS failure: {reason}" if reason else exc.strerror or str(exc) or type(exc).__name__


class Link:
    """One connection attempt at a time; a problem is printed once until it changes."""

    def __init__(self, client: mqtt.Client, config: MqttConfig, topics: Dict[str, Any]) -> None:
        self.client, self.config, self.topics = client, config, topics
        self.where = f"{config.host}:{config.resolved_port()}"
        self.reported: Optional[str] = None
        self.accepted, self.refusal, self.error = False, "", ""
        self.ever_accepted = False
        self.problem = ""
        """The last problem, in words (what ``report`` printed, or would have)."""
        client.on_connect, client.on_log = self._on_connect, self._on_log

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self.refusal = str(reason)
            return
        self.accepted = self.ever_accepted = True
        client.subscribe([(topic, 1) for topic in self.topics])
        if self.reported is not None:
            print(f"{PROG}: connected to {self.where}", file=sys.stderr, flush=True)
            self.reported = None

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, text: str) -> None:
        if level == mqtt.MQTT_LOG_ERR and not self.error:
            self.error = text  # paho says why a read or write failed only here

    def session(self, time_left: Callable[[], float]) -> Optional[Tuple[str, str]]:
        """Connect and run the network loop until it ends: None at the deadline, else the kind
        of problem and the line saying it (a lost socket's text varies: only its kind counts)."""
        self.accepted, self.refusal, self.error = False, "", ""
        try:
            self.client.connect(self.config.host, self.config.resolved_port(), keepalive=30)
        except OSError as exc:
            line = f"cannot connect to {self.where}: {_describe(exc)}"
            return line, line
        while self.client.loop(timeout=min(0.25, max(time_left(), 0))) == mqtt.MQTT_ERR_SUCCESS:
            if time_left() <= 0:
                return None
        if self.refusal:
            line = f"the broker at {self.where} refused us: {self.refusal}"
            return line, line
        why = self.error or "closed by the broker"
        if self.accepted:
            return "lost", f"lost the connection to {self.where}: {why}"
        tls = self.config.tls
        if tls is not None and tls.cert_file is None:
            why += " (does it want a client certificate? --cert-file, --key-file)"
        return "closed", f"the broker at {self.where} closed the connection: {why}"

    def report(self, kind: str, line: str) -> None:
        self.problem = line
        if kind != self.reported:
            print(f"{PROG}: {line}; retrying", file=sys.stderr, flush=True)
            self.reported = kind

    def serve(self, time_left: Callable[[], float]) -> None:
        """Sessions until ``time_left()`` is 0, with capped, jittered backoff between them."""
        backoff = Backoff(BACKOFF_MIN_S, BACKOFF_MAX_S)
        while time_left() > 0:
            problem = self.session(time_left)
            if problem is None:
                break
            self.report(*problem)
            if self.accepted:
                backoff.reset()
            time.sleep(max(0.0, min(backoff.next(), time_left())))
        self.client.disconnect()
        self.client.loop(timeout=0.1)


def mqtt_config(args: argparse.Namespace) -> MqttConfig:
    """The broker settings from ``--mqtt`` and the TLS flags; ValueError says what is wrong."""
    keys = parse_mqtt_url(args.mqtt)
    tls_files = {"ca_file": args.ca_file, "cert_file": args.cert_file, "key_file": args.key_file}
    if "tls" in keys:
        keys["tls"] = {name: path for name, path in tls_files.items() if path is not None}
    elif any(tls_files.values()):
        raise ValueError("--ca-file, --cert-file and --key-file need an mqtts:// URL")
    if args.station is not None and "topic_prefix" in keys:
        raise ValueError("give the topic prefix in the URL or --station, not both")
    missing = [path for path in tls_files.values() if path is not None and not path.is_file()]
    if missing:
        raise ValueError(f"{missing[0]}: no such file")
    if args.station is not None and not STATION.match(args.station):
        raise ValueError(f"--station {args.station!r}: letters, digits, '_', '.', '-'")
    try:
        return MqttConfig(**keys)
    except ValidationError as exc:
        raise ValueError(
            f"--mqtt {args.mqtt!r}: {exc.errors()[0]['msg'].split('error, ')[-1]}"
        ) from None


def make_client(config: MqttConfig) -> mqtt.Client:
    """A paho client with the credentials and TLS settings; ValueError for unusable files."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"birdd-listen-{uuid.uuid4().hex[:12]}"
    )
    try:
        apply_credentials(client, config)
    except OSError as exc:  # ssl.SSLError included
        raise ValueError(f"cannot use the TLS files given: {exc}") from None
    return client


def run(args: argparse.Namespace) -> int:
    """0: done (count reached, or timed out without --count); 1: never connected, or --count
    not reached; 2: usage."""
    try:
        check = load_schema_check()
    except ImportError:
        print(f"{PROG} needs jsonschema: pip install 'birdd[hub]'", file=sys.stderr)
        return 2
    try:
        config = mqtt_config(args)
        client = make_client(config)
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    prefix = config.topic_prefix or f"birdd/{args.station or '+'}"
    listener = Listener(args, check, sys.stdout)
    topics = {f"{prefix}/detections": listener.on_detection}
    if args.status:
        topics[f"{prefix}/status"] = listener.on_status
    for topic, callback in topics.items():
        client.message_callback_add(topic, callback)
    deadline = time.monotonic() + args.timeout if args.timeout else math.inf

    def time_left() -> float:
        return 0.0 if listener.done else deadline - time.monotonic()

    link = Link(client, config, topics)
    try:
        link.serve(time_left)
    except KeyboardInterrupt:
        return 130
    finally:
        listener.skip.close()
    if not link.ever_accepted:
        problem = link.problem or f"the broker at {link.where} did not answer"
        print(f"{PROG}: no connection in {args.timeout:g} s: {problem}", file=sys.stderr)
        return 1
    if not listener.done and listener.count is not None:
        print(
            f"{PROG}: timed out after {args.timeout:g} s: {listener.printed} of "
            f"{listener.count} detections arrived",
            file=sys.stderr,
        )
        return 1
    return 0
