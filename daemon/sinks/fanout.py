"""Detection fan-out: one thread and one bounded queue per sink.

A slow sink (an SD card, a pipe into a pager) then delays only its own queue until that queue
is full; ``publish`` blocks on a full queue, which is the back-pressure simulate mode wants.
The pipeline publishes from its post-processing thread, never from an audio callback.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Dict, List, Optional, Sequence, Tuple, Union

from birdd.daemon.records import Detection, Gap, RunInfo, check_end_status
from birdd.daemon.sinks.base import Sink, SinkError

log = logging.getLogger(__name__)

_STOP = None
"""Queued after the last batch; the worker returns when it takes it."""

Batch = Tuple[Detection, ...]
Item = Union[Batch, Gap]


def pump(sink: Sink, batches: queue.Queue) -> Optional[Exception]:
    """Write queued batches (and gaps) to ``sink`` until ``_STOP``; return the first error.

    After an error the sink gets nothing more, but the queue is still drained so that
    ``publish`` never blocks on a sink that has died.
    """
    error: Optional[Exception] = None
    while True:
        item = batches.get()
        if item is _STOP:
            return error
        if error is not None:
            continue
        try:
            if isinstance(item, Gap):
                sink.record_gap(item)
            else:
                sink.write(item)
        except Exception as exc:
            error = exc
            log.error("sink %s failed; its later detections are discarded: %s", sink.name, exc)
            log.debug("sink %s traceback", sink.name, exc_info=True)


class _SinkThread:
    """A sink, its queue, and the thread that runs ``pump`` over them."""

    def __init__(self, sink: Sink, maxsize: int) -> None:
        self.sink = sink
        self.batches: queue.Queue = queue.Queue(maxsize)
        self.error: Optional[Exception] = None
        self.thread = threading.Thread(target=self._run, name=f"sink {sink.name}", daemon=True)

    def _run(self) -> None:
        self.error = pump(self.sink, self.batches)

    def stop(self) -> None:
        """Queue the end marker after every batch and wait until the sink has written them all."""
        self.batches.put(_STOP)
        self.thread.join()


class SinkFanout:
    """Delivers every published batch to every sink, each in its own thread."""

    def __init__(self, sinks: Sequence[Sink], maxsize: int = 64) -> None:
        if maxsize < 1:
            raise ValueError("the sink queue size must be at least 1")
        self.sinks = list(sinks)
        self.maxsize = maxsize
        self._threads: List[_SinkThread] = []

    def open(self, run: RunInfo) -> None:
        """Open every sink in the caller's thread, then start their threads.

        When one fails to open, those already open are closed as "failed" and a ``SinkError``
        names the one that failed.
        """
        opened: List[Sink] = []
        for sink in self.sinks:
            try:
                sink.open(run)
            except Exception as exc:
                for done in opened:
                    _close(done, "failed")
                raise SinkError(f"{sink.name}: {exc}") from exc
            opened.append(sink)
        self._threads = [_SinkThread(sink, self.maxsize) for sink in self.sinks]
        for worker in self._threads:
            worker.thread.start()

    def publish(self, detections: Sequence[Detection]) -> None:
        """Queue one batch for every sink; blocks while a sink's queue is full."""
        if not self._threads:
            raise RuntimeError("SinkFanout.publish() before open() or after close()")
        batch: Batch = tuple(detections)
        if not batch:
            return
        for worker in self._threads:
            worker.batches.put(batch)

    def record_gap(self, gap: Gap) -> None:
        """Queue a source outage for every sink, in order with the detections around it."""
        for worker in self._threads:
            worker.batches.put(gap)

    def queue_depths(self) -> Dict[str, int]:
        """Batches waiting in each sink's queue, by sink name (for health reports)."""
        depths = {sink.name: 0 for sink in self.sinks}
        depths.update((worker.sink.name, worker.batches.qsize()) for worker in list(self._threads))
        return depths

    def close(self, status: str) -> None:
        """Let every sink write what is queued, close it, and raise ``SinkError`` if any failed.

        A sink whose ``write`` failed is closed as "failed" whatever ``status`` says, so that
        it does not mark incomplete output as complete.
        """
        check_end_status(status)
        threads, self._threads = self._threads, []
        for worker in threads:
            worker.stop()
        problems = [f"{w.sink.name}: {w.error}" for w in threads if w.error is not None]
        for worker in threads:
            problem = _close(worker.sink, "failed" if worker.error else status)
            if problem:
                problems.append(problem)
        if problems:
            raise SinkError("; ".join(problems))


def _close(sink: Sink, status: str) -> Optional[str]:
    """Close one sink; return a one-line problem instead of raising, so the others still close."""
    try:
        sink.close(status)
    except Exception as exc:
        log.error("sink %s failed to close: %s", sink.name, exc)
        log.debug("sink %s traceback", sink.name, exc_info=True)
        return f"{sink.name}: {exc}"
    return None
