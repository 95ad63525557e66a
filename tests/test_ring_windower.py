import threading
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from birdd.daemon.pipeline.clock import LiveClock
from birdd.daemon.pipeline.ring import RingBuffer
from birdd.daemon.pipeline.windower import Windower, hop_samples
from birdd.daemon.records import StreamClock

START = datetime(2024, 5, 2, 4, 0, tzinfo=timezone.utc)


def feed(ring: RingBuffer, samples: np.ndarray, block: int) -> threading.Thread:
    def writer() -> None:
        for start in range(0, len(samples), block):
            ring.write(samples[start : start + block])
        ring.close()

    thread = threading.Thread(target=writer)
    thread.start()
    return thread


def cut(samples, window, hop, rate, capacity, block=7):
    ring = RingBuffer(capacity, drop_oldest=False)
    thread = feed(ring, samples, block)
    clock = StreamClock(START, rate, "test")
    windows = list(Windower(ring, window, hop, clock, "test", "mix").windows())
    thread.join()
    return windows


def test_windows_match_birdnet_chunking_with_zero_padded_tail():
    rate = 10
    samples = np.arange(1, 72, dtype=np.float32)  # 7.1 s at 10 Hz: windows at 0, 3, 6
    windows = cut(samples, window=30, hop=30, rate=rate, capacity=40)
    assert [w.start_sample for w in windows] == [0, 30, 60]
    assert [w.valid for w in windows] == [30, 30, 11]
    assert [w.start_utc - START for w in windows] == [timedelta(seconds=s) for s in (0, 3, 6)]
    assert [w.end_utc - START for w in windows] == [timedelta(seconds=s) for s in (3, 6, 7.1)]
    for w in windows:
        np.testing.assert_array_equal(w.samples[: w.valid], samples[w.start_sample :][: w.valid])
        assert not w.samples[w.valid :].any()


def test_tail_shorter_than_one_second_is_dropped_but_a_short_stream_is_not():
    rate = 10
    assert len(cut(np.ones(65, np.float32), 30, 30, rate, 40)) == 2  # 0.5 s tail dropped
    only = cut(np.ones(4, np.float32), 30, 30, rate, 40)
    assert [(w.start_sample, w.valid) for w in only] == [(0, 4)]


def test_overlapping_windows_through_a_small_ring_lose_nothing():
    rate = 100
    samples = np.random.default_rng(1).standard_normal(2000).astype(np.float32)
    windows = cut(samples, window=300, hop=150, rate=rate, capacity=320, block=33)
    assert [w.start_sample for w in windows] == list(range(0, 2000, 150))[: len(windows)]
    for w in windows:
        np.testing.assert_array_equal(w.samples[: w.valid], samples[w.start_sample :][: w.valid])


def test_windows_are_stamped_by_the_live_clock_across_a_reanchor():
    """Fed as the capture feeds it (the clock anchored before each block is written), every
    window carries the clock's time of its first sample and of the end of its audio; after the
    device comes back an hour later the windows are dated by the new anchor."""
    rate, block, t0 = 100, 50, 1_800_000_000.0
    back_at = 1050  # the sample where audio resumes after an hour's outage
    clock = LiveClock(rate, "audio clock")
    ring = RingBuffer(400, drop_oldest=False)

    def capture() -> None:
        for sample in range(0, 2000, block):
            epoch = t0 + sample / rate + (3600 if sample >= back_at else 0)
            if sample == back_at:
                clock.anchor(sample, epoch)
            else:
                clock.observe(sample, epoch + (0.003 if sample else 0.0))  # seen a bit late
            ring.write(np.ones(block, np.float32))
        ring.close()

    thread = threading.Thread(target=capture)
    thread.start()
    windows = list(Windower(ring, 300, 150, clock, "test", "mix").windows())
    thread.join()
    assert clock.anchors == 2
    for w in windows:
        assert (w.start_utc, w.end_utc) == (clock.utc(w.start_sample), clock.utc(w.end_sample))
        expected = t0 + w.start_sample / rate + (3600 if w.start_sample >= back_at else 0)
        assert w.start_utc.timestamp() == pytest.approx(expected, abs=1e-6)
    (across,) = [w for w in windows if w.start_sample < back_at < w.end_sample]
    assert (across.end_utc - across.start_utc).total_seconds() == pytest.approx(3603.0)


def test_live_ring_overwrites_oldest_and_counts_it():
    ring = RingBuffer(100, drop_oldest=True)
    ring.write(np.arange(250, dtype=np.float32))
    assert ring.written == 250 and ring.overwritten == 150
    out = np.zeros(50, np.float32)
    ring.close()
    assert ring.read(0, out) == 50 and not out.any()  # lost samples read as zeros
    assert ring.read(200, out) == 50
    np.testing.assert_array_equal(out, np.arange(200, 250, dtype=np.float32))


def test_close_releases_a_blocked_writer():
    ring = RingBuffer(10, drop_oldest=False)
    thread = threading.Thread(target=ring.write, args=(np.ones(30, np.float32),))
    thread.start()
    thread.join(0.2)
    assert thread.is_alive() and ring.written == 10
    ring.close()
    thread.join(2)
    assert not thread.is_alive()


@pytest.mark.parametrize("overlap", [-0.5, 2.95, 3.0])
def test_overlap_out_of_range_is_refused(overlap):
    with pytest.raises(ValueError, match="overlap_s"):
        hop_samples(144000, 48000, overlap)


def test_hop_from_overlap():
    assert hop_samples(144000, 48000, 0) == 144000
    assert hop_samples(144000, 48000, 1.5) == 72000
    assert hop_samples(144000, 48000, 2.9) == 4800


def test_frame_ring_reader_gets_blocks_in_order_and_skips_what_was_overwritten():
    """The callback side: frames of two channels written without waiting; a reader that falls
    behind resumes at the oldest frame still there and the loss is counted."""
    ring = RingBuffer(8, drop_oldest=True, channels=2)
    frames = np.arange(24, dtype=np.float32).reshape(12, 2)
    out = np.zeros((5, 2), np.float32)
    ring.write(frames[:3])
    assert ring.read_available(0, out, timeout=0.1) == (0, 3)
    np.testing.assert_array_equal(out[:3], frames[:3])
    ring.write(frames[3:12])  # 9 more frames into a ring of 8: frame 3 is lost unread
    first, count = ring.read_available(3, out, timeout=0.1)
    assert (first, count) == (4, 5) and ring.overwritten == 1
    np.testing.assert_array_equal(out, frames[4:9])


def test_frame_ring_reader_times_out_and_wakes_on_write():
    ring = RingBuffer(8, drop_oldest=True, channels=1)
    out = np.zeros((4, 1), np.float32)
    assert ring.read_available(0, out, timeout=0.05) == (0, 0)
    threading.Timer(0.05, ring.write, args=(np.ones((2, 1), np.float32),)).start()
    assert ring.read_available(0, out, timeout=5) == (0, 2)


def test_a_compact_ring_keeps_16_bit_samples_and_gives_float32_back():
    """Live capture rings keep 16-bit samples (half the memory): what comes back is the input
    rounded to the nearest 1/32768, clipped to [-1, 1), across the ring's wrap-around and
    after overwriting."""
    rng = np.random.default_rng(7)
    audio = rng.uniform(-1.2, 1.2, 2500).astype(np.float32)
    ring = RingBuffer(1000, drop_oldest=True, compact=True)
    for start in range(0, len(audio), 300):
        ring.write(audio[start : start + 300])
    assert ring._data.dtype == np.int16 and ring._data.nbytes == 2000
    out = np.full(1000, np.nan, dtype=np.float32)
    first, end = ring.read_span(1500, out)
    assert (first, end) == (1500, 2500)
    expected = np.clip(np.rint(audio[1500:] * 32768), -32768, 32767) / 32768
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected.astype(np.float32))
    assert ring.overwritten == 1500
