"""``birdd listen`` against a real mosquitto: output, dedupe, hostile payloads, exit codes,
status, auth and TLS failures, a broker that is down at start and restarts mid-run."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from typing import List, Tuple

import pytest
from broker import Mosquitto

from birdd.daemon.mqtt import listen
from birdd.daemon.mqtt.payload import detection_payload
from birdd.daemon.records import Detection, new_detection_id
from birdd.engines.models.labels import Species

# What the CLI will do with these two functions; run as a fresh process, as a user would.
LISTEN = (
    "import argparse, sys\n"
    "from birdd.daemon.mqtt import listen\n"
    "parser = argparse.ArgumentParser(prog='birdd listen')\n"
    "listen.add_arguments(parser)\n"
    "sys.exit(listen.run(parser.parse_args()))\n"
)
JUNCO = Species("Junco hyemalis", "Dark-eyed Junco", "daejun", True)
SISKIN = Species("Spinus pinus", "Pine Siskin", "pinsis", True)
MODEL = {"name": "BirdNET_GLOBAL_6K_V2.4_Model_FP32", "version": "2.4", "sha256": "5e" * 32}
SKIPPED = "birdd listen: skipped a message on birdd/garden/detections: "


def detection(
    species: Species = JUNCO, offset: float = 15.0, confidence: float = 0.8, station="garden"
) -> bytes:
    """A message as the station publishes it: a stored record plus schema version and place."""
    start = datetime(2024, 5, 2, 4, 0, 0, tzinfo=timezone.utc) + timedelta(seconds=offset)
    record = Detection(
        id=new_detection_id(),
        species=species,
        species_index=3,
        confidence=confidence,
        offset_start=offset,
        offset_end=offset + 3,
        start=start,
        end=start + timedelta(seconds=3),
        source="/srv/audio/XC563936.flac",
        channel="mix",
        station=station,
        model=MODEL,
    ).to_record()
    return detection_payload(json.dumps(record), lat=44.98, lon=-93.27)


def edited(payload: bytes, **changes) -> bytes:
    message = json.loads(payload)
    message.update(changes)
    return json.dumps(message).encode()


def publish(broker: Mosquitto, *messages: Tuple[str, bytes], retain: bool = False) -> None:
    client = broker.client()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    for topic, payload in messages:
        client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def start_listen(broker: Mosquitto, *args: str, url: str = "", password: str = ""):
    env = {k: v for k, v in os.environ.items() if k != "BIRDD_MQTT_PASSWORD"}
    if password:
        env["BIRDD_MQTT_PASSWORD"] = password
    command = [sys.executable, "-c", LISTEN, "--mqtt", url or broker.url, *args]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def finish(process: subprocess.Popen) -> Tuple[int, List[str], List[str]]:
    out, err = process.communicate(timeout=20)
    assert "Traceback" not in err, err
    return process.returncode, out.splitlines(), err.splitlines()


def test_jsonl_prints_each_id_once_and_skips_hostile_payloads(broker):
    process = start_listen(broker, "--format", "jsonl", "--count", "3", "--timeout", "15")
    broker.wait_for_log(" 1 birdd/+/detections")
    first, second, third = detection(), detection(SISKIN, 39.0, 0.43), detection(offset=21.0)
    huge = edited(detection(), padding="x" * 2**20)
    topic = "birdd/garden/detections"
    publish(
        broker,
        *[(topic, payload) for payload in (first, first, b"\xff\xfe{}", b"{not json")],
        (topic, edited(detection(), confidence=1.5)),
        (topic, huge),
        *[(topic, payload) for payload in (second, first, third)],
    )
    code, out, err = finish(process)
    assert code == 0
    assert [json.loads(line) for line in out] == [json.loads(p) for p in (first, second, third)]
    assert err == [
        SKIPPED + "not UTF-8 text",
        SKIPPED + "not JSON (Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1))",
        SKIPPED + "fails detection.v1.json at /confidence: 1.5 is greater than the maximum of 1",
        SKIPPED + f"{len(huge)} bytes, over the 65536-byte limit",
    ]


def test_table_rows_one_station_and_status_changes(broker):
    publish(
        broker, ("birdd/garden/status", b"online"), ("birdd/yard/status", b"online"), retain=True
    )
    process = start_listen(
        broker, "--station", "garden", "--status", "--count", "2", "--timeout", "15"
    )
    broker.wait_for_log(" 1 birdd/garden/status")
    publish(broker, ("birdd/yard/detections", detection(station="yard")))
    publish(broker, ("birdd/garden/detections", detection()))
    publish(broker, ("birdd/garden/status", b"offline"), retain=True)
    publish(broker, ("birdd/garden/status", b"offline"), retain=True)  # no change: not printed
    publish(broker, ("birdd/garden/detections", detection(SISKIN, 39.0, 0.4321)))
    code, out, err = finish(process)
    assert (code, err) == (0, [])
    now = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ"
    assert re.fullmatch(now + "  garden  status online \\(retained\\)", out[0]), out
    assert out[1] == "2024-05-02 04:00:15Z  garden  Dark-eyed Junco (Junco hyemalis)  0.80"
    assert re.fullmatch(now + "  garden  status offline", out[2]), out
    assert out[3] == "2024-05-02 04:00:39Z  garden  Pine Siskin (Spinus pinus)  0.43"
    assert len(out) == 4


def test_timeout_before_count_exits_1(broker):
    process = start_listen(broker, "--count", "5", "--timeout", "1.5")
    broker.wait_for_log(" 1 birdd/+/detections")
    publish(broker, *[("birdd/garden/detections", detection(offset=t)) for t in (3, 6)])
    code, out, err = finish(process)
    assert (code, len(out)) == (1, 2)
    assert err == ["birdd listen: timed out after 1.5 s: 2 of 5 detections arrived"]


def test_a_flood_of_garbage_gives_few_lines_and_a_count(broker):
    process = start_listen(broker, "--count", "1", "--timeout", "15")
    broker.wait_for_log(" 1 birdd/+/detections")
    publish(broker, *[("birdd/garden/detections", b"garbage")] * 200)
    publish(broker, ("birdd/garden/detections", detection()))
    code, out, err = finish(process)
    assert (code, len(out)) == (0, 1)
    shown = [line for line in err if line.startswith(SKIPPED)]
    assert 5 <= len(shown) <= 10, err
    hidden = re.findall(
        r"\(and (\d+) more not shown\)$|^birdd listen: skipped (\d+) more", "\n".join(err), re.M
    )
    assert len(shown) + sum(int(a or b) for a, b in hidden) == 200, err


def test_broker_down_at_start_then_restarted(broker_factory):
    broker = broker_factory("plain", start=False)
    where = f"127.0.0.1:{broker.port}"
    refused = f"birdd listen: cannot connect to {where}: Connection refused; retrying"
    process = start_listen(broker, "--count", "2", "--timeout", "15", url=broker.url)
    assert process.stderr.readline().rstrip("\n") == refused
    broker.start()
    broker.wait_for_log(" 1 birdd/+/detections", timeout=8)
    first, second = detection(), detection(SISKIN, 39.0)
    publish(broker, ("birdd/garden/detections", first))
    assert process.stdout.readline().rstrip("\n") == listen.table_row(json.loads(first))
    broker.restart()
    broker.wait_for_log(" 1 birdd/+/detections", timeout=8, count=2)
    publish(broker, ("birdd/garden/detections", first), ("birdd/garden/detections", second))
    code, out, err = finish(process)
    assert (code, out) == (0, [listen.table_row(json.loads(second))])
    assert err[:2] == [
        f"birdd listen: connected to {where}",
        f"birdd listen: lost the connection to {where}: closed by the broker; retrying",
    ]
    # Reconnecting may beat the restarted broker to its port: then one more refusal.
    assert err[2:] in ([f"birdd listen: connected to {where}"], [refused, err[-1]])
    assert err[-1] == f"birdd listen: connected to {where}"


def test_a_broker_never_reached_exits_1_with_its_error(broker_factory):
    """With --timeout and no --count, a listener that got messages exits 0; one that never
    connected did not do its job: exit 1, the broker's error the last line."""
    broker = broker_factory("plain", start=False)
    refused = f"cannot connect to 127.0.0.1:{broker.port}: Connection refused"
    process = start_listen(broker, "--timeout", "1.5", url=broker.url)
    assert finish(process) == (
        1,
        [],
        [f"birdd listen: {refused}; retrying", f"birdd listen: no connection in 1.5 s: {refused}"],
    )


def test_password_from_the_environment(broker_factory):
    broker = broker_factory("password")
    url = f"mqtt://{broker.user}@127.0.0.1:{broker.port}"
    good = start_listen(
        broker, "--count", "1", "--timeout", "15", url=url, password=broker.password
    )
    broker.wait_for_log(" 1 birdd/+/detections")
    message = detection()
    publish(broker, ("birdd/garden/detections", message))
    assert finish(good) == (0, [listen.table_row(json.loads(message))], [])


def test_wrong_password_is_one_line_and_retries(broker_factory):
    broker = broker_factory("password")
    url = f"mqtt://{broker.user}@127.0.0.1:{broker.port}"
    process = start_listen(broker, "--count", "1", "--timeout", "1.5", url=url, password="wrong")
    code, out, err = finish(process)
    assert (code, out) == (1, [])
    refused = f"the broker at 127.0.0.1:{broker.port} refused us: Not authorized"
    assert err == [
        f"birdd listen: {refused}; retrying",
        f"birdd listen: no connection in 1.5 s: {refused}",
    ]
    assert broker.log_text().count("not authorised") >= 2  # it did retry, quietly


def test_mutual_tls_and_tls_failures(broker_factory):
    broker = broker_factory("tls", require_certificate=True)
    certs, where = broker.certs, f"127.0.0.1:{broker.port}"
    client_cert = ["--cert-file", str(certs.client_cert), "--key-file", str(certs.client_key)]
    good = start_listen(
        broker, "--count", "1", "--timeout", "15", "--ca-file", str(certs.ca_file), *client_cert
    )
    broker.wait_for_log(" 1 birdd/+/detections")
    message = detection()
    publish(broker, ("birdd/garden/detections", message))
    assert finish(good) == (0, [listen.table_row(json.loads(message))], [])

    stranger = start_listen(
        broker, "--timeout", "1", "--ca-file", str(certs.other_ca_file), *client_cert
    )
    untrusted = (
        f"cannot connect to {where}: TLS certificate check failed: "
        "self-signed certificate in certificate chain"
    )
    assert finish(stranger) == (
        1,
        [],
        [
            f"birdd listen: {untrusted}; retrying",
            f"birdd listen: no connection in 1 s: {untrusted}",
        ],
    )
    no_cert = start_listen(broker, "--timeout", "1", "--ca-file", str(certs.ca_file))
    code, out, err = finish(no_cert)
    assert (code, out, len(err)) == (1, [], 2)
    assert err[0].startswith(f"birdd listen: the broker at {where} closed the connection: ")
    assert err[0].endswith("(does it want a client certificate? --cert-file, --key-file); retrying")
    assert err[1].startswith(f"birdd listen: no connection in 1 s: the broker at {where} closed")


def test_without_jsonschema_one_line_and_exit_2(broker):
    hide = "import sys\nsys.modules['jsonschema'] = None  # as if not installed\n"
    command = [sys.executable, "-c", hide + LISTEN, "--mqtt", broker.url, "--timeout", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=20)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "birdd listen needs jsonschema: pip install 'birdd[hub]'\n"


def run_in_process(capsys, *args: str) -> Tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="birdd listen")
    listen.add_arguments(parser)
    code = listen.run(parser.parse_args(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_in_process_retained_status_and_quiet_timeout(broker, capsys):
    publish(broker, ("birdd/garden/status", b"online"), retain=True)
    code, out, err = run_in_process(
        capsys, "--mqtt", broker.url, "--status", "--format", "jsonl", "--timeout", "0.5"
    )
    assert (code, err) == (0, "")
    assert [json.loads(line) for line in out.splitlines()] == [
        {"topic": "birdd/garden/status", "status": "online", "retained": True}
    ]
    assert run_in_process(capsys, "--mqtt", broker.url + "/farm/north", "--timeout", "0.3") == (
        0,
        "",
        "",
    )
    broker.wait_for_log(" 1 farm/north/detections")


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--mqtt", "http://host"],
            "--mqtt 'http://host': use mqtt://host[:port][/prefix] or mqtts://…",
        ),
        (
            ["--mqtt", "mqtt://u:pw@host"],
            "--mqtt: put no password in the URL; set BIRDD_MQTT_PASSWORD or mqtt.password_file",
        ),
        (
            ["--mqtt", "mqtt://host/a/+"],
            "--mqtt 'mqtt://host/a/+': a topic prefix such as 'birdd/garden': "
            "no '#', '+' or empty levels",
        ),
        (
            ["--mqtt", "mqtt://host/a", "--station", "x"],
            "give the topic prefix in the URL or --station, not both",
        ),
        (
            ["--mqtt", "mqtt://host", "--station", "a/#"],
            "--station 'a/#': letters, digits, '_', '.', '-'",
        ),
        (
            ["--mqtt", "mqtt://host", "--ca-file", "ca.pem"],
            "--ca-file, --cert-file and --key-file need an mqtts:// URL",
        ),
        (["--mqtt", "mqtts://host", "--ca-file", "/no/ca.pem"], "/no/ca.pem: no such file"),
    ],
)
def test_usage_errors_exit_2(capsys, args, message):
    assert run_in_process(capsys, *args) == (2, "", f"birdd listen: {message}\n")


def test_unusable_tls_files_exit_2(broker_factory, capsys):
    certs = broker_factory("tls", start=False).certs
    args = [
        "--mqtt",
        "mqtts://host",
        "--cert-file",
        str(certs.client_cert),
        "--key-file",
        str(certs.ca_file),
    ]
    code, out, err = run_in_process(capsys, *args)
    assert (code, out) == (2, "")
    assert err.startswith("birdd listen: cannot use the TLS files given: ")


def test_recent_ids_are_bounded():
    recent = listen.Recent(3)
    assert [recent.put(key) for key in "abca"] == [True, True, True, False]
    assert recent.put("d") and recent.put("e")
    assert recent.put("b")  # forgotten: the oldest go first
    assert (
        recent.put("s", "online") and recent.put("s", "offline") and not recent.put("s", "offline")
    )


def test_skip_reports_burst_then_one_per_second():
    now = [0.0]
    err = io.StringIO()
    report = listen.SkipReport(err, clock=lambda: now[0])
    for _ in range(20):
        report("t", "bad")
    now[0] = 1.0
    report("t", "bad")
    report("t", "bad")
    report.close()
    lines = err.getvalue().splitlines()
    assert lines == ["birdd listen: skipped a message on t: bad"] * 5 + [
        "birdd listen: skipped a message on t: bad (and 15 more not shown)",
        "birdd listen: skipped 1 more messages",
    ]


def test_printable_escapes_terminal_controls():
    assert listen.printable("Junco\x1b[2J\u202e") == "Junco\\x1b[2J\\u202e"
    assert listen.printable("x" * 300, limit=10) == "x" * 10 + "…"
