"""The one backoff (daemon/retry.py) that live inputs, the MQTT client and `birdd listen` use."""

from __future__ import annotations

import random

import pytest

from birdd.daemon.retry import Backoff


def test_waits_double_up_to_the_cap_at_the_top_of_the_jitter() -> None:
    backoff = Backoff(0.5, 30.0, jitter=lambda: 0.999999)
    waits = [round(backoff.next(), 3) for _ in range(9)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert backoff.failures == 9 and backoff.capped


def test_the_jitter_takes_at_most_half_of_each_wait() -> None:
    backoff = Backoff(0.5, 30.0, jitter=lambda: 0.0)
    assert [backoff.next() for _ in range(8)] == [0.25, 0.5, 1, 2, 4, 8, 15, 15]


def test_random_waits_stay_between_half_and_all_of_the_ceiling() -> None:
    backoff = Backoff(1.0, 8.0, jitter=random.Random(7).random)
    ceilings = [1, 2, 4, 8] + [8] * 96
    waits = [backoff.next() for _ in ceilings]
    assert all(c / 2 <= w < c for w, c in zip(waits, ceilings))
    assert len({round(w, 6) for w in waits[4:]}) > 50  # stations do not retry in step


def test_success_starts_again_from_the_first_wait() -> None:
    backoff = Backoff(0.5, 4.0, jitter=lambda: 0.999999)
    for _ in range(5):
        backoff.next()
    assert backoff.capped
    backoff.reset()
    assert backoff.failures == 0 and not backoff.capped
    assert backoff.next() == pytest.approx(0.5)


def test_a_cap_below_the_first_wait_is_the_first_wait() -> None:
    backoff = Backoff(5.0, 1.0, jitter=lambda: 0.999999)
    assert backoff.capped and backoff.next() == pytest.approx(5.0)


def test_years_of_failures_do_not_overflow() -> None:
    backoff = Backoff(0.5, 30.0, jitter=lambda: 0.0)
    backoff.failures = 10_000
    assert backoff.next() == 15.0
