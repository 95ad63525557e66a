"""The start gate: a few inputs starting at once, a slot given back once, a stopped wait."""

from __future__ import annotations

import threading

from birdd.daemon.sources.startgate import StartGate, StartSlot


def test_a_full_gate_waits_until_a_slot_is_given_back_or_the_source_stops() -> None:
    gate, stop = StartGate(2), threading.Event()
    assert gate.enter(stop) and gate.enter(stop)
    first, second = StartSlot(gate), StartSlot(gate)
    stop.set()
    assert not gate.enter(stop)  # full, and the source is stopping: no slot
    stop.clear()
    first.release()
    first.release()  # given back once only: the second release must not free a third slot
    assert gate.enter(stop)
    stop.set()
    assert not gate.enter(stop)
    second.release()
