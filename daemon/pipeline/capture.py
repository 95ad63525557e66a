"""The capture stage: one thread per source turns its blocks into the streams the windower cuts.

A *stream* is one analysed channel of one source (the downmix, a chosen channel, or each of
several channels separately): it has its own resampler, level meter and ring buffer at the
model's rate. All streams of a source share its sample counter and its clock, which the capture
anchors (live) before it writes the samples the clock dates.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional, Sequence

import numpy as np

from birdd.daemon.pipeline.clock import LiveClock
from birdd.daemon.pipeline.meters import LevelMeter
from birdd.daemon.pipeline.ring import RingBuffer
from birdd.daemon.pipeline.windower import Windower
from birdd.daemon.records import Channel, Clock, Gap
from birdd.daemon.sources.base import AudioSource, Block, Resampler, select_channel

log = logging.getLogger("birdd")


class Stream:
    """One channel of one source at the model's rate: resampler → ring buffer → windower."""

    def __init__(
        self,
        source: AudioSource,
        channel: Channel,
        clock: Clock,
        window_samples: int,
        hop: int,
        ring_buffer_s: float,
    ) -> None:
        """``clock`` dates the source's samples at the model's rate (``clock.sample_rate``)."""
        model_rate = clock.sample_rate
        self.source_name = source.name
        self.channel = channel
        capacity = int(ring_buffer_s * model_rate)
        self.ring = RingBuffer(capacity, drop_oldest=source.paced, compact=source.paced)
        self.windower = Windower(self.ring, window_samples, hop, clock, source.name, channel)
        self.level = LevelMeter(source.sample_rate)
        self._resample = Resampler(source.sample_rate, model_rate)

    def feed(self, samples: np.ndarray) -> None:
        mono = select_channel(samples, self.channel)
        self.level.update(mono)
        self.ring.write(self._resample(mono))

    def finish(self) -> None:
        """End of the source: flush the resampler's tail into the ring."""
        self.ring.write(self._resample(np.zeros(0, np.float32), last=True))


class SilenceWatch:
    """Logs once when a stream has been digitally silent for ``warn_after_s`` (a dead cable or
    a muted input), and once when sound comes back."""

    def __init__(self, stream: Stream, warn_after_s: float) -> None:
        self.stream = stream
        self.warn_after_s = warn_after_s
        self.warned = False

    def check(self) -> None:
        silent_s = self.stream.level.silence_s
        if not self.warned and silent_s >= self.warn_after_s:
            self.warned = True
            log.warning(
                "%s channel %s: digital silence for %.0f s: check the microphone, its cable "
                "and the input gain",
                self.stream.source_name,
                self.stream.channel,
                silent_s,
            )
        elif self.warned and silent_s == 0:
            self.warned = False
            log.info("%s channel %s: sound again", self.stream.source_name, self.stream.channel)


class SourceStage:
    """Reads one source into its streams, anchors the source's clock and reports gaps."""

    def __init__(
        self,
        source: AudioSource,
        streams: Sequence[Stream],
        clock: Optional[LiveClock],
        on_gap: Callable[[Gap], None],
        silence_warn_s: float,
        realtime_factor: Optional[float] = None,
    ) -> None:
        self.source = source
        self.streams = list(streams)
        self.clock = clock
        self.on_gap = on_gap
        self.realtime_factor = realtime_factor
        self._silence = [SilenceWatch(stream, silence_warn_s) for stream in self.streams]

    @property
    def samples(self) -> int:
        """Samples at the model rate delivered so far (the source's sample counter)."""
        return self.streams[0].ring.written

    def run(self, stop_event: threading.Event) -> None:
        began = time.monotonic()
        try:
            for block in self.source.blocks():
                if stop_event.is_set():
                    break
                self._timestamp(block)
                for stream in self.streams:
                    stream.feed(block.samples)
                for watch in self._silence:
                    watch.check()
                self._pace(began, stop_event)
            if not stop_event.is_set():
                for stream in self.streams:
                    stream.finish()
        finally:
            for stream in self.streams:
                stream.ring.close()
            gap = self.source.open_gap()
            if gap is not None:
                self.on_gap(gap)

    def stop(self) -> None:
        self.source.stop()
        for stream in self.streams:
            stream.ring.close()

    def _timestamp(self, block: Block) -> None:
        if block.after_gap is not None:
            self.on_gap(block.after_gap)
        if self.clock is None or block.captured_at is None:
            return
        if block.after_gap is not None:
            self.clock.anchor(self.samples, block.captured_at)
        else:
            self.clock.observe(self.samples, block.captured_at)

    def _pace(self, began: float, stop_event: threading.Event) -> None:
        """Simulate ``--realtime``: hold a file back to the given multiple of real time."""
        if self.realtime_factor:
            rate = self.streams[0].windower.sample_rate
            ahead = self.samples / rate / self.realtime_factor
            delay = ahead - (time.monotonic() - began)
            if delay > 0:
                stop_event.wait(delay)
