"""``birdd listen --client-id``, the durable mode, against a real mosquitto with persistence:
what a station publishes while the listener is away, through broker restarts, is printed by
the next run, each detection once; a run that stops at ``--count`` leaves the rest queued."""

from __future__ import annotations

import json

import pytest
from test_listen import detection, finish, publish, run_in_process, start_listen

TOPIC = "birdd/garden/detections"
CLIENT = ("--client-id", "hub-terminal", "--format", "jsonl")


def printed_ids(lines) -> list:
    return [json.loads(line)["id"] for line in lines]


def test_what_was_published_while_away_comes_through_broker_restarts(broker_factory):
    broker = broker_factory("plain", persistent=True)
    first_run = start_listen(broker, *CLIENT, "--timeout", "1")  # makes the session
    broker.wait_for_log(" 1 birdd/+/detections")
    assert finish(first_run) == (0, [], [])
    sent = [detection(offset=3.0 * n) for n in range(6)]
    publish(broker, *[(TOPIC, payload) for payload in (sent[0], *sent[:3])])  # and a resend
    broker.restart()
    publish(broker, *[(TOPIC, payload) for payload in sent[3:]])

    plain = start_listen(broker, "--timeout", "1")  # a clean session gets none of it
    assert finish(plain) == (0, [], [])
    code, out, err = finish(start_listen(broker, *CLIENT, "--count", "2", "--timeout", "15"))
    assert (code, err) == (0, [])
    ids = [json.loads(payload)["id"] for payload in sent]
    assert printed_ids(out) == ids[:2]  # the resend of the first: printed once
    broker.restart()
    code, out, err = finish(start_listen(broker, *CLIENT, "--count", "4", "--timeout", "15"))
    assert (code, err) == (0, [])
    assert printed_ids(out) == ids[2:]  # left unacknowledged by the run before
    assert finish(start_listen(broker, *CLIENT, "--timeout", "1")) == (0, [], [])


def test_session_expiry_0_ends_the_session(broker_factory):
    broker = broker_factory("plain", persistent=True)
    assert finish(start_listen(broker, *CLIENT, "--timeout", "1"))[0] == 0
    publish(broker, (TOPIC, detection()))
    code, out, _ = finish(start_listen(broker, *CLIENT, "--session-expiry", "0", "--timeout", "1"))
    assert (code, len(out)) == (0, 1)
    publish(broker, (TOPIC, detection()))
    assert finish(start_listen(broker, *CLIENT, "--timeout", "1")) == (0, [], [])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--client-id", "a/b"], "--client-id 'a/b': 1 to 128 letters, digits, '_', '.', ':', '-'"),
        (["--client-id", "x" * 129], None),
    ],
)
def test_bad_client_id_exit_2(capsys, args, message):
    code, out, err = run_in_process(capsys, "--mqtt", "mqtt://host", *args)
    assert (code, out) == (2, "")
    assert err == f"birdd listen: {message}\n" if message else err.startswith("birdd listen: ")


def test_bad_session_expiry_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as ended:
        run_in_process(capsys, "--mqtt", "mqtt://host", "--session-expiry", "-1")
    assert ended.value.code == 2
    assert "give whole seconds from 0 to 4294967294" in capsys.readouterr().err
