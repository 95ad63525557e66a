"""The configured inputs: each sound device exists and hears something (neither a dead
microphone nor a clipping one), each URL has ffmpeg to read it."""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from birdd.daemon.app.doctor.base import Context, Result, fail, ok, warn
from birdd.daemon.app.doctor.engine import split_fix
from birdd.daemon.sources.base import SourceError
from birdd.daemon.sources.device import MIX_CHANNELS, find_device, import_sounddevice
from birdd.daemon.sources.ffmpeg import is_url, redacted

DEAD_DBFS = -80.0
"""Below this RMS an input carries no sound: an unplugged, muted or unpowered microphone (a
working one's self-noise and the ambience stay above it even on a still night)."""
FULL_SCALE = 0.999
"""A sample at or above this magnitude (-0.01 dBFS) is at full scale."""
CLIPPED_FRACTION = 0.001
"""One sample in a thousand at full scale is clipping, not a single loud click."""
STALL_S = 3.0
"""Waited beyond the recording's length before a device that delivers nothing is given up."""
SETTLE_S = 0.25
"""Recorded first and dropped: some devices open with a click or a burst of zeros."""
DEAD_FIX = (
    "check the cable, the microphone's power (plug-in power / phantom), mute switches and the "
    "capture volume: alsamixer -c CARD (F4), or pactl set-source-mute/-volume under PulseAudio"
)
CLIP_FIX = (
    "lower the capture gain (alsamixer -c CARD, F4, or the interface's gain knob) until the "
    "peak stays below -3 dBFS"
)


@dataclass(frozen=True)
class Level:
    rms_dbfs: float
    peak_dbfs: float
    clipped: float
    """Fraction of the samples at full scale."""

    def describe(self, seconds: float) -> str:
        return f"RMS {self.rms_dbfs:.1f} dBFS, peak {self.peak_dbfs:.1f} dBFS over {seconds:.1f} s"


def dbfs(value: float) -> float:
    return 20 * math.log10(value) if value > 0 else -math.inf


def measure(samples: np.ndarray) -> Level:
    """The level of ``float32[frames]`` or ``[frames, channels]`` audio of full scale 1.0; the
    RMS is the loudest channel's (one live channel is enough to hear)."""
    data = np.asarray(samples, dtype=np.float64).reshape(len(samples), -1)
    rms = float(np.sqrt(np.mean(data * data, axis=0)).max()) if data.size else 0.0
    peak = float(np.abs(data).max()) if data.size else 0.0
    clipped = float(np.mean(np.abs(data) >= FULL_SCALE)) if data.size else 0.0
    return Level(dbfs(rms), dbfs(peak), clipped)


def classify(name: str, level: Level, seconds: float) -> Result:
    """Dead (digital silence or RMS under -80 dBFS) and clipping fail; a full-scale peak
    here and there is a warning."""
    check = "audio level"
    detail = f"{name}: {level.describe(seconds)}"
    if level.rms_dbfs < DEAD_DBFS:
        what = "digital silence" if level.peak_dbfs == -math.inf else "no sound"
        return fail(check, f"{detail}: {what}, a dead microphone", DEAD_FIX)
    if level.clipped >= CLIPPED_FRACTION:
        return fail(
            check, f"{detail}: {level.clipped:.1%} of samples at full scale, clipping", CLIP_FIX
        )
    if level.peak_dbfs >= dbfs(FULL_SCALE):
        return warn(check, f"{detail}: touches full scale", CLIP_FIX)
    return ok(check, detail)


def check_audio(ctx: Context) -> List[Result]:
    """One or two lines per ``audio.inputs`` entry."""
    assert ctx.config is not None
    results: List[Result] = []
    for spec in ctx.config.audio.inputs:
        results += _input(spec, ctx)
    return results


def _input(spec: Union[str, int], ctx: Context) -> List[Result]:
    text = str(spec)
    if text == "-":
        return [ok("audio", "'-': WAV or raw audio on birdd's standard input (not tried here)")]
    if is_url(text):
        return [_ffmpeg(redacted(text))]
    if "://" in text:
        return [
            fail(
                "audio",
                f"{redacted(text)}: not a URL scheme birdd gives ffmpeg",
                "use rtsp://, rtsps://, http(s)://, srt://, rtmp://, udp://, rtp:// or tcp://",
            )
        ]
    if not text.isdigit() and Path(text).is_file():
        return [
            fail(
                "audio",
                f"{text} is a recording, not a live input",
                f"replay it with 'birdd --simulate {text} --realtime'; list devices in "
                "audio.inputs",
            )
        ]
    return _device(spec, ctx)


def _ffmpeg(url: str) -> Result:
    if shutil.which("ffmpeg") is None:
        return fail(
            "audio", f"{url}: ffmpeg is not installed to read it", "sudo apt install ffmpeg"
        )
    return ok("audio", f"{url}: ffmpeg found (the stream itself is not opened here)")


def _device(spec: Union[str, int], ctx: Context) -> List[Result]:
    try:
        sd = import_sounddevice()
        device = find_device(sd, spec)
    except SourceError as exc:
        problem, fix = split_fix(str(exc), "plug it in, or correct audio.inputs")
        return [fail("audio", problem, fix)]
    name = f"{spec!r} = {device['index']}: {device['name']}"
    found = ok("audio", f"{name} ({device['channels']} ch, {device['default_rate']} Hz)")
    return [found, _level(sd, device, spec, ctx)]


def _level(sd: Any, device: Dict[str, Any], spec: Union[str, int], ctx: Context) -> Result:
    assert ctx.config is not None
    rate = ctx.config.audio.sample_rate or device["default_rate"]
    wanted = _channel_indices(ctx.config.audio.channels)
    channels = max(wanted) + 1 if wanted else min(device["channels"], MIX_CHANNELS)
    if channels > device["channels"]:
        return fail(
            "audio level",
            f"{spec!r} has {device['channels']} input channel(s), audio.channels needs {channels}",
            "correct audio.channels (0 is the first channel) or use another device",
        )
    settle = int(SETTLE_S * rate)
    try:
        data = _record(sd, device["index"], settle + int(ctx.level_s * rate), rate, channels)
    except sd.PortAudioError as exc:
        return fail(
            "audio level",
            f"{spec!r}: cannot record {channels} ch at {rate} Hz ({exc})",
            "stop what holds the device (a running birdd: systemctl stop birdd) and check the "
            "user is in the 'audio' group",
        )
    if data is None:
        return fail(
            "audio level",
            f"{spec!r}: no audio came within {ctx.level_s + SETTLE_S + STALL_S:g} s",
            "replug the device and look for USB errors in 'dmesg'",
        )
    data = data[settle:]
    return classify(str(spec), measure(data[:, wanted] if wanted else data), ctx.level_s)


def _record(sd: Any, index: int, frames: int, rate: int, channels: int) -> Optional[np.ndarray]:
    """``frames`` of audio from device ``index``; None when the device stalls (a hung USB
    device can stop delivering without an error, and PortAudio would wait forever)."""
    data = sd.rec(frames, samplerate=rate, channels=channels, dtype="float32", device=index)
    deadline = time.monotonic() + frames / rate + STALL_S
    while sd.get_stream().active and time.monotonic() < deadline:
        time.sleep(0.05)
    stalled = sd.get_stream().active
    sd.stop()
    return None if stalled else data


def _channel_indices(channels: Any) -> Optional[List[int]]:
    """The channels ``audio.channels`` analyses; None for 'mix' (all of them)."""
    if channels == "mix":
        return None
    return list(channels) if isinstance(channels, list) else [int(channels)]
