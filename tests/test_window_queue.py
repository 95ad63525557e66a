"""The window queue's full policy: a file waits for the engine however long it takes; a live
input waits one hop (a burst of windows drains within it) and then drops the oldest window,
counted; a failing pipeline still takes the end, and a stream's end is never dropped."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from typing import List

import numpy as np

from birdd.daemon.pipeline.inference import END_OF_STREAM, QueuedWindow, StreamEnd
from birdd.daemon.pipeline.windowqueue import WindowQueue
from birdd.daemon.records import Window

HOP_S = 0.5


def queued(index: int) -> QueuedWindow:
    now = datetime.now(timezone.utc)
    samples = np.zeros(8, dtype=np.float32)
    window = Window(index, index * 8, samples, 8, "mic", 0, now, now)
    return QueuedWindow(window, time.monotonic())


class Drops:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def indexes(windows: WindowQueue) -> List[object]:
    items = []
    while not windows.empty():
        item = windows.get_nowait()
        items.append(item.window.index if isinstance(item, QueuedWindow) else item)
    return items


def full_queue(live: bool, drops: Drops, size: int = 2) -> WindowQueue:
    windows = WindowQueue(live, HOP_S, drops, size=size)
    for index in range(size):
        windows.offer(queued(index), failing=lambda: False)
    return windows


def take_one_after(windows: WindowQueue, delay_s: float) -> threading.Thread:
    def consumer() -> None:
        time.sleep(delay_s)
        windows.get()

    thread = threading.Thread(target=consumer)
    thread.start()
    return thread


def test_a_file_waits_for_the_engine_longer_than_a_hop_and_loses_nothing():
    drops = Drops()
    windows = full_queue(live=False, drops=drops)
    consumer = take_one_after(windows, delay_s=3 * HOP_S)
    started = time.monotonic()
    windows.offer(queued(2), failing=lambda: False)
    consumer.join()
    assert time.monotonic() - started >= 3 * HOP_S
    assert drops.count == 0 and indexes(windows) == [1, 2]


def test_a_live_burst_that_drains_within_the_hop_drops_nothing():
    drops = Drops()
    windows = full_queue(live=True, drops=drops)
    consumer = take_one_after(windows, delay_s=HOP_S / 3)
    windows.offer(queued(2), failing=lambda: False)
    consumer.join()
    assert drops.count == 0 and indexes(windows) == [1, 2]


def test_a_live_input_the_engine_cannot_follow_drops_the_oldest_after_one_hop():
    drops = Drops()
    windows = full_queue(live=True, drops=drops)
    started = time.monotonic()
    windows.offer(queued(2), failing=lambda: False)
    waited = time.monotonic() - started
    assert HOP_S <= waited < HOP_S + 1.0
    assert drops.count == 1 and indexes(windows) == [1, 2]


def test_a_stream_end_keeps_its_place_when_the_oldest_window_makes_room():
    drops = Drops()
    windows = WindowQueue(True, HOP_S, drops, size=3)
    end = StreamEnd("mic", 0)
    for item in (end, queued(0), queued(1), queued(2)):
        windows.offer(item, failing=lambda: False)
    assert drops.count == 1 and indexes(windows) == [end, 1, 2]


def test_a_failing_pipeline_takes_no_more_windows_but_still_takes_the_end():
    drops = Drops()
    windows = full_queue(live=False, drops=drops)
    windows.offer(queued(2), failing=lambda: True)
    windows.offer(END_OF_STREAM, failing=lambda: True)
    assert drops.count == 1 and indexes(windows) == [1, END_OF_STREAM]
