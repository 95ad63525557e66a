"""LiveClock: sample index → UTC from the audio clock, right to ±50 ms after hours."""

from __future__ import annotations

import numpy as np
import pytest

from birdd.daemon.pipeline.clock import LiveClock

NOMINAL = 48_000
T0 = 1_800_000_000.0


def paced_blocks(hours: float, ppm: float, jitter_ms: float, seed: int = 1):
    """A paced source: 0.1 s blocks from a card whose crystal runs ``ppm`` fast, each block's
    capture time seen late by up to ``jitter_ms`` (scheduling), never early."""
    rng = np.random.default_rng(seed)
    true_rate = NOMINAL * (1 + ppm * 1e-6)
    block = NOMINAL // 10
    for sample in range(0, int(hours * 3600 * NOMINAL), block):
        true_epoch = T0 + sample / true_rate
        yield sample, true_epoch, true_epoch + rng.exponential(jitter_ms / 4) / 1000


@pytest.mark.parametrize("ppm", [-100.0, 0.0, 60.0, 150.0])
def test_stays_within_50_ms_over_three_hours_of_drift_and_jitter(ppm: float) -> None:
    clock = LiveClock(NOMINAL, "audio clock")
    worst = 0.0
    for sample, true_epoch, seen_epoch in paced_blocks(3.0, ppm, jitter_ms=20):
        clock.observe(sample, seen_epoch)
        if sample % (NOMINAL * 60) == 0:  # check once a minute of audio
            worst = max(worst, abs(clock.epoch(sample) - true_epoch))
    assert worst <= 0.05, f"{ppm} ppm: worst error {worst * 1000:.1f} ms"
    naive_error = 3 * 3600 * abs(ppm) * 1e-6
    if ppm:
        assert naive_error > 0.5  # counting samples alone would be off by this much
        assert clock.anchors > 1


def test_jitter_alone_does_not_move_the_anchor_much() -> None:
    clock = LiveClock(NOMINAL, "audio clock")
    for sample, _, seen in paced_blocks(0.5, 0.0, jitter_ms=30):
        clock.observe(sample, seen)
    assert clock.anchors <= 2
    assert abs(clock.epoch(0) - T0) <= 0.03


def test_a_gap_reanchors_and_keeps_earlier_samples_on_the_old_anchor() -> None:
    clock = LiveClock(NOMINAL, "audio clock")
    clock.observe(0, T0)
    clock.anchor(NOMINAL * 60, T0 + 3600.0)  # the device came back an hour later
    assert clock.epoch(NOMINAL * 30) == pytest.approx(T0 + 30)
    assert clock.epoch(NOMINAL * 61) == pytest.approx(T0 + 3601)
    assert clock.utc(NOMINAL * 61).timestamp() == pytest.approx(T0 + 3601)


def test_refuses_a_time_before_any_audio() -> None:
    with pytest.raises(RuntimeError, match="before the first audio block"):
        LiveClock(NOMINAL, "audio clock").epoch(0)
