"""The live inputs: opening them, and changing them while the daemon runs (a config reload).

An input is identified by its entry in ``audio.inputs`` as written ('default', 'USB', 2, a
URL, '-'); an ``InputSet`` holds each entry with the settings it is opened with, so that two
sets diff into what to add, remove and restart, and what keeps running untouched (same ring
buffer, same clock, same window sequence).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from birdd.daemon.config import AudioConfig, BirddConfig
from birdd.daemon.pipeline.chain import Pipeline, SourceSpec
from birdd.daemon.pipeline.clock import LiveClock
from birdd.daemon.sources.base import AudioSource, SourceError, check_channel
from birdd.daemon.sources.device import DeviceSource
from birdd.daemon.sources.ffmpeg import FfmpegSource, is_url
from birdd.daemon.sources.live import ReconnectPolicy
from birdd.daemon.sources.pyav import PyavSource
from birdd.daemon.sources.stdin import PcmFormat, StdinSource

log = logging.getLogger("birdd")

CLOCK_ORIGIN = "audio clock"
STDIN = "-"
Spec = Union[str, int]


def channels_needed(channels: Any) -> Optional[int]:
    """How many channels to capture for ``audio.channels`` (None: 'mix', take them all)."""
    if channels == "mix":
        return None
    indices = channels if isinstance(channels, list) else [channels]
    return max(indices) + 1


def open_source(
    spec: Spec, config: BirddConfig, model_rate: int, at_start: bool = True
) -> AudioSource:
    """The source for one ``audio.inputs`` entry: a device, a URL (for ffmpeg or PyAV, by
    ``audio.decoder``), or '-'. An input added by a reload is waited for when missing
    (``audio.require_device_at_start`` is about the start)."""
    audio = config.audio
    required = audio.require_device_at_start and at_start
    policy = ReconnectPolicy(audio.watchdog_s, audio.reconnect_max_s, required)
    wanted = channels_needed(audio.channels)
    text = str(spec)
    if text == STDIN:
        raw = PcmFormat(audio.stdin.sample_rate, audio.stdin.channels, audio.stdin.format)
        return StdinSource(raw, audio.block_s, sys.stdin.buffer)
    if is_url(text):
        decoder = PyavSource if audio.decoder == "pyav" else FfmpegSource
        return decoder(text, policy, audio.block_s, model_rate, wanted or 1)
    if "://" in text:
        raise SourceError(
            f"audio.inputs: {text!r} is a URL ffmpeg is not asked to read here; use rtsp://, "
            "rtsps://, http(s)://, srt://, rtmp://, udp://, rtp:// or tcp://"
        )
    return DeviceSource(spec, policy, audio.block_s, audio.sample_rate, wanted)


def refuse_recordings(inputs: Sequence[Spec]) -> None:
    """A recording given as a live input would be waited for as a device of that name."""
    for spec in inputs:
        text = str(spec)
        if text != STDIN and not text.isdigit() and "://" not in text and Path(text).is_file():
            raise SourceError(
                f"{text} is a recording, not a live input: play it through the live pipeline "
                f"with `birdd --simulate {text} --realtime`"
            )


def open_sources(config: BirddConfig, model_rate: int) -> List[AudioSource]:
    sources = [open_source(spec, config, model_rate) for spec in config.audio.inputs]
    check_sources(sources, config)
    return sources


def check_sources(
    sources: Sequence[AudioSource], config: BirddConfig, running: Sequence[str] = ()
) -> None:
    """Every input's name once, also among those of the inputs ``running`` (a reload), and
    the channels asked for in each of ``sources``."""
    names = [*running, *(source.name for source in sources)]
    if len(set(names)) < len(names):
        raise SourceError(f"audio.inputs names one input twice: {', '.join(names)}")
    for source in sources:
        check_channel(config.audio.channels, source.channels, source.name)


def input_settings(spec: Spec, audio: AudioConfig) -> Tuple[Any, ...]:
    """What an input is opened with: a change restarts it. stdin has none a reload can
    change (it is read once, from the start)."""
    text = str(spec)
    common = (audio.watchdog_s, audio.reconnect_max_s, audio.block_s)
    if text == STDIN:
        return ()
    if is_url(text):
        return ("url", audio.decoder, *common)
    return ("device", audio.sample_rate, *common)


@dataclass(frozen=True)
class InputChanges:
    added: Tuple[str, ...] = ()
    removed: Tuple[str, ...] = ()
    restarted: Tuple[str, ...] = ()
    """Entries in both sets whose settings differ: stopped, then opened again."""
    kept: Tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.restarted)

    def describe(self) -> str:
        parts = [
            f"{what} {', '.join(entries)}"
            for what, entries in (
                ("added", self.added),
                ("removed", self.removed),
                ("restarted", self.restarted),
                ("kept running", self.kept),
            )
            if entries
        ]
        return "; ".join(parts)


@dataclass(frozen=True)
class InputSet:
    """``audio.inputs`` as entries (their text) with each one's spec and settings, in order."""

    entries: Tuple[Tuple[str, Spec, Tuple[Any, ...]], ...]

    @classmethod
    def of(cls, audio: AudioConfig) -> InputSet:
        return cls(tuple((str(spec), spec, input_settings(spec, audio)) for spec in audio.inputs))

    def settings(self) -> Dict[str, Tuple[Any, ...]]:
        return {key: settings for key, _, settings in self.entries}

    def spec(self, key: str) -> Spec:
        return next(spec for entry, spec, _ in self.entries if entry == key)

    def diff(self, new: InputSet) -> InputChanges:
        old, wanted = self.settings(), new.settings()
        both = [key for key in wanted if key in old]
        return InputChanges(
            added=tuple(key for key in wanted if key not in old),
            removed=tuple(key for key in old if key not in wanted),
            restarted=tuple(key for key in both if old[key] != wanted[key]),
            kept=tuple(key for key in both if old[key] == wanted[key]),
        )


class LiveInputs:
    """The inputs of a running pipeline, changed by a reload to those of a new config."""

    def __init__(self, pipeline: Pipeline, rate: int, config: BirddConfig) -> None:
        self.pipeline, self.rate = pipeline, rate
        self.current = InputSet.of(config.audio)
        self._names = {
            key: stage.source.name for key, stage in zip(self.current.settings(), pipeline.stages)
        }

    def change(self, config: BirddConfig) -> None:
        """Open what ``config`` adds or restarts (refusing the whole change with SourceError,
        nothing touched, when one cannot be opened), then stop what it removes or restarts and
        start the new ones; the inputs it keeps are left alone."""
        new = InputSet.of(config.audio)
        changes = self.current.diff(new)
        if not changes:
            return
        opening = [*changes.added, *changes.restarted]
        if STDIN in opening:
            raise SourceError("stdin ('-') is read from the start only: restart birdd to add it")
        refuse_recordings([new.spec(key) for key in opening])
        opened = self._open(new, opening, config)
        for key in (*changes.removed, *changes.restarted):
            self.pipeline.remove_source(self._names.pop(key))
        for key, source in zip(opening, opened):
            self.pipeline.add_source(SourceSpec(source, LiveClock(self.rate, CLOCK_ORIGIN)))
            self._names[key] = source.name
        self.current = new
        log.info("reload: inputs: %s", changes.describe())

    def _open(self, new: InputSet, keys: Sequence[str], config: BirddConfig) -> List[AudioSource]:
        opened: List[AudioSource] = []
        try:
            for key in keys:
                opened.append(open_source(new.spec(key), config, self.rate, at_start=False))
            staying = [key for key in self._names if key in new.settings() and key not in keys]
            check_sources(opened, config, [self._names[key] for key in staying])
        except BaseException:
            for source in opened:
                source.close()
            raise
        return opened
