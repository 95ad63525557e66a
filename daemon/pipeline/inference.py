"""The inference stage: collects windows into batches and scores them with the engine."""

from __future__ import annotations

import queue
import time
from typing import Callable, List, NamedTuple, Optional, Tuple, Union

import numpy as np

from birdd.daemon.pipeline.meters import RecentLatencies
from birdd.daemon.records import Channel, ScoredWindow, Window
from birdd.engines.base import Engine
from birdd.engines.errors import BatchFailed, EngineError

END_OF_STREAM = None
MAX_FAILED_BATCHES_IN_A_ROW = 3


class QueuedWindow(NamedTuple):
    """A window and when it became available (``time.monotonic()``), for the latency meter."""

    window: Window
    ready_at: float


class StreamEnd(NamedTuple):
    """Queued after the last window of a stream whose input was removed or restarted while
    the others go on (a config reload): its open events are closed when it is reached."""

    source: str
    channel: Channel


Queued = Union[QueuedWindow, StreamEnd, None]


def next_batch(windows: queue.Queue, size: int) -> Tuple[List[QueuedWindow], Queued]:
    """Wait for one window, then take what is already queued, up to ``size``; and the
    marker that ended the batch (a ``StreamEnd`` to handle after it, or END_OF_STREAM).

    An empty batch with END_OF_STREAM is the end. Never waits for a batch to fill: in live
    mode a window is scored as soon as it exists; in simulate mode the queue is full anyway.
    """
    batch: List[QueuedWindow] = []
    while len(batch) < size:
        try:
            item = windows.get() if not batch else windows.get_nowait()
        except queue.Empty:
            break
        if item is END_OF_STREAM:
            if batch:
                windows.put(END_OF_STREAM)  # seen again on the next call, which then ends
            return batch, END_OF_STREAM
        if isinstance(item, StreamEnd):
            return batch, item
        batch.append(item)
    return batch, None


class InferenceStage:
    """Scores batches of windows (with ``embeddings``, also their embeddings from the same
    engine call); ``engine_seconds`` is the time spent inside the engine and
    ``latencies`` holds, per recent window, the time from its availability to its scores.

    A batch the engine cannot score (``BatchFailed``: its worker died on it twice) is handed
    to ``on_failed`` and skipped, so one bad batch costs a few seconds of audio, not the
    daemon; ``MAX_FAILED_BATCHES_IN_A_ROW`` such batches in a row mean the engine is broken,
    and the stage fails (the service manager restarts the daemon)."""

    def __init__(
        self,
        engine: Engine,
        on_scored: Callable[[List[ScoredWindow]], None],
        on_failed: Callable[[List[Window], BatchFailed], None],
        embeddings: bool = False,
        on_stream_end: Callable[[StreamEnd], None] = lambda _: None,
    ) -> None:
        self.engine = engine
        self.embeddings = embeddings  # also the embeddings, from the same engine call (a gate)
        self.on_scored = on_scored
        self.on_failed = on_failed
        self.on_stream_end = on_stream_end
        self.batch_size = engine.input_spec.max_batch
        self.engine_seconds = 0.0
        self.windows_scored = 0
        self.windows_failed = 0
        self.latencies = RecentLatencies()
        self.busy_since: Optional[float] = None
        """``time.monotonic()`` when the batch in hand was taken from the queue (scoring,
        post-processing, handing to the sinks); None while waiting for windows."""
        self._failed_in_a_row = 0

    def run(self, windows: queue.Queue) -> None:
        while True:
            batch, marker = next_batch(windows, self.batch_size)
            if batch:
                self.busy_since = time.monotonic()
                self._handle(batch)
                self.busy_since = None
            if isinstance(marker, StreamEnd):
                self.on_stream_end(marker)
            elif marker is END_OF_STREAM and not batch:
                return

    def _handle(self, batch: List[QueuedWindow]) -> None:
        try:
            scored = self.score([queued.window for queued in batch])
        except BatchFailed as failure:
            self._skip([queued.window for queued in batch], failure)
            return
        self._failed_in_a_row = 0
        scored_at = time.monotonic()
        for queued in batch:
            self.latencies.add(scored_at - queued.ready_at)
        self.on_scored(scored)

    def score(self, batch: List[Window]) -> List[ScoredWindow]:
        stacked = np.stack([window.samples for window in batch])
        began = time.perf_counter()
        if self.embeddings:
            outputs = self.engine.infer(stacked)
            scores, embeddings = outputs.scores, list(outputs.embeddings)
        else:
            scores, embeddings = self.engine.predict(stacked), [None] * len(batch)
        self.engine_seconds += time.perf_counter() - began
        self.windows_scored += len(batch)
        return [ScoredWindow(*parts) for parts in zip(batch, scores, embeddings)]

    def _skip(self, batch: List[Window], failure: BatchFailed) -> None:
        self._failed_in_a_row += 1
        if self._failed_in_a_row >= MAX_FAILED_BATCHES_IN_A_ROW:
            raise EngineError(
                f"{failure}; {self._failed_in_a_row} batches in a row could not be scored, "
                "giving up on the engine"
            ) from None
        self.windows_failed += len(batch)
        self.on_failed(batch, failure)
