"""``birdd listen``: the monitoring hub's reference subscriber to ``<prefix>/detections``.

It prints each detection once (stations re-send after outages: dedupe by ``id``), checks every
message against ``detection.v1.json`` and survives whatever else arrives: payloads that are
not JSON, fail the schema or are huge are reported on stderr, rate-limited, and skipped. A
broker that is down, refuses us or fails TLS gives one line per new problem and a retry with
capped backoff. Single-threaded: paho's network loop runs in this thread, callbacks included.

``--client-id`` is the durable mode, the hub's session (``persistent_client``): the broker
keeps the subscriptions and queues what arrives while we are away, through its own restarts
when it has persistence. A message is acknowledged once printed (or skipped), never before: a
run that ends at ``--count`` leaves the rest for the next run. That is at-least-once: a run
killed between printing and acknowledging has its last lines printed again by the next run
(the dedupe by ``id`` lives in one process).
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
from typing import Any, Callable, Dict, List, Optional, TextIO, Tuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from birdd.daemon.mqtt.client import apply_credentials, persistent_client, resume_session
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
CLIENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
SESSION_EXPIRY_S, RECEIVE_MAXIMUM = 7 * 86400, 1000  # the hub's defaults (hub/config.py)
BARRIER_TOPIC, BARRIER_TIMEOUT_S = "$birdd-listen/barrier", 2.0


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
    parser.add_argument(
        "--client-id",
        metavar="ID",
        help="durable mode: a fixed client id whose session the broker keeps, so the next run "
        "with this id gets what was published meanwhile (MQTT 5, QoS 1)",
    )
    parser.add_argument(
        "--session-expiry",
        type=_seconds,
        default=SESSION_EXPIRY_S,
        metavar="S",
        help="with --client-id: how long the broker keeps the session while we are away "
        "(default 7 days; 0 ends it when this run ends)",
    )
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


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 0xFFFFFFFE:
        raise argparse.ArgumentTypeError(f"{text}: give whole seconds from 0 to 4294967294")
    return value


class Listener:
    """Prints what arrives: detections once per id, status changes; stops at ``count``."""

    def __init__(self, args: argparse.Namespace, check: SchemaCheck, out: TextIO) -> None:
        self.jsonl, self.count = args.format == "jsonl", args.count
        self.check, self.out = check, out
        self.seen, self.statuses = Recent(REMEMBERED_IDS), Recent(REMEMBERED_STATIONS)
        self.skip = SkipReport(sys.stderr)
        self.printed = 0
        self.stopped = False
        """Set when the run ends: what arrives from then on is left unacknowledged."""

    @property
    def counted(self) -> bool:
        return self.count is not None and self.printed >= self.count

    @property
    def done(self) -> bool:
        return self.stopped or self.counted

    def _print(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def on_detection(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self.done:
            return  # not acknowledged: a durable session keeps it for the next run
        try:
            message = decode_detection(bytes(msg.payload), self.check)
        except Skipped as skipped:
            self.skip(msg.topic, str(skipped))
        else:
            if self.seen.put(message["id"]):
                self._print(json.dumps(message) if self.jsonl else table_row(message))
                self.printed += 1
        _ack(client, msg)

    def on_status(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self.done:
            return
        _ack(client, msg)
        status = msg.payload.decode("ascii", "replace") if len(msg.payload) < 16 else ""
        if status not in ("online", "offline"):
            self.skip(msg.topic, "a status is 'online' or 'offline'")
        elif self.statuses.put(msg.topic, status):
            station = printable(msg.topic.split("/")[-2])
            if self.jsonl:
                fields = {"topic": msg.topic, "status": status, "retained": bool(msg.retain)}
                self._print(json.dumps(fields))
            else:
                now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
                retained = " (retained)" if msg.retain else ""
                self._print(f"{now}  {station}  status {status}{retained}")


def _ack(client: mqtt.Client, msg: mqtt.MQTTMessage) -> None:
    """The PUBACK, sent after the message was handled (the client acknowledges manually)."""
    if msg.qos > 0:
        client.ack(msg.mid, msg.qos)


def _describe(exc: OSError) -> str:
    verify = getattr(exc, "verify_message", None)  # ssl.SSLCertVerificationError
    if verify:
        return f"TLS certificate check failed: {verify}"
    reason = getattr(exc, "reason", None)  # other ssl.SSLError
    return f"TLS failure: {reason}" if reason else exc.strerror or str(exc) or type(exc).__name__


class Link:
    """One connection attempt at a time; a problem is printed once until it changes."""

    def __init__(
        self,
        client: mqtt.Client,
        config: MqttConfig,
        topics: Dict[str, Any],
        resume: Dict[str, Any],
    ) -> None:
        self.client, self.config, self.topics, self.resume = client, config, topics, resume
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
            self.client.connect(
                self.config.host, self.config.resolved_port(), keepalive=30, **self.resume
            )
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

    def close(self) -> None:
        """Disconnect once the broker has read our acknowledgements. Closing a socket with
        messages left unread makes the kernel reset the connection, and the broker loses what
        it had not read yet: the last PUBACKs, which a durable session would then send again.
        An UNSUBSCRIBE from a topic we never subscribed to is the barrier: the broker handles a
        connection's packets in order, so its UNSUBACK comes after it took the PUBACKs."""
        if self.client.is_connected():
            answered: List[int] = []
            self.client.on_unsubscribe = lambda client, userdata, mid, *rest: answered.append(mid)
            _, mid = self.client.unsubscribe(BARRIER_TOPIC)
            deadline = time.monotonic() + BARRIER_TIMEOUT_S
            while mid not in answered and time.monotonic() < deadline:
                if self.client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS:
                    break
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
    if args.client_id is not None and not CLIENT_ID.match(args.client_id):
        raise ValueError(
            f"--client-id {args.client_id!r}: 1 to 128 letters, digits, '_', '.', ':', '-'"
        )
    try:
        return MqttConfig(**keys)
    except ValidationError as exc:
        raise ValueError(
            f"--mqtt {args.mqtt!r}: {exc.errors()[0]['msg'].split('error, ')[-1]}"
        ) from None


def make_client(config: MqttConfig, client_id: Optional[str]) -> mqtt.Client:
    """A paho client with the credentials and TLS settings; ValueError for unusable files.

    Without ``client_id``, a random id and a clean session (MQTT 3.1.1): what arrives while
    we are away is not ours. With one, a durable MQTT 5 session. Both acknowledge manually.
    """
    if client_id is None:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"birdd-listen-{uuid.uuid4().hex[:12]}",
            manual_ack=True,
        )
    else:
        client = persistent_client(client_id, "5")
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
        client = make_client(config, args.client_id)
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

    resume: Dict[str, Any] = {}
    if args.client_id is not None:
        resume = resume_session("5", args.session_expiry, RECEIVE_MAXIMUM)
    link = Link(client, config, topics, resume)
    try:
        link.serve(time_left)
        listener.stopped = True
        link.close()
    except KeyboardInterrupt:
        return 130
    finally:
        listener.skip.close()
    if not link.ever_accepted:
        problem = link.problem or f"the broker at {link.where} did not answer"
        print(f"{PROG}: no connection in {args.timeout:g} s: {problem}", file=sys.stderr)
        return 1
    if listener.count is not None and not listener.counted:
        print(
            f"{PROG}: timed out after {args.timeout:g} s: {listener.printed} of "
            f"{listener.count} detections arrived",
            file=sys.stderr,
        )
        return 1
    return 0
