"""Sound devices through PortAudio (sounddevice): the capture callback and device selection.

The callback runs on PortAudio's real-time thread. It copies the block into a preallocated
ring buffer, notes when the block was captured and whether PortAudio overflowed, and nothing
else: no allocation of audio buffers, no logging, no waiting, and it never raises.

PortAudio lists devices when it initialises, so a device plugged in later (or a sound server
that restarted) is found only after re-initialising it; that happens before each reopen while
no other stream of this process is open.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List, Optional, Union

import numpy as np

from birdd.daemon.pipeline.ring import RingBuffer
from birdd.daemon.sources.base import Block, SourceError
from birdd.daemon.sources.live import Connection, LiveSource, ReconnectPolicy, SourceUnavailable

PREFERRED_RATE = 48000
MIX_CHANNELS = 2
CAPTURE_RING_S = 10.0
"""Callback → reader ring; the reader only resamples, so seconds are plenty."""
TIMES = 64
"""Capture times of the last callbacks kept for timestamping."""
MAX_ADC_DELAY_S = 2.0
CALLBACK_S = 0.05
"""Audio per callback: each one wakes the reader, so fewer and larger is cheaper (PortAudio's
own choice with ALSA meant ~2% of a core in each of the two threads); 50 ms adds at most
that much to the latency of a detection."""

_open_streams = 0
_portaudio_lock = threading.Lock()


def import_sounddevice() -> Any:
    """sounddevice, or a one-line SourceError saying what to install."""
    try:
        import sounddevice
    except ImportError:
        raise SourceError(
            "sound devices need the sounddevice package: pip install 'birdd[live]'"
        ) from None
    except OSError:
        raise SourceError(
            "the PortAudio library is missing: apt install libportaudio2 (Debian, Raspberry Pi "
            "OS, Jetson)"
        ) from None
    return sounddevice


def input_devices(sd: Any) -> List[Dict[str, Any]]:
    """PortAudio's input devices with their index, name, host API, channels and default rate."""
    apis = sd.query_hostapis()
    return [
        {
            "index": index,
            "name": info["name"],
            "hostapi": apis[info["hostapi"]]["name"],
            "channels": info["max_input_channels"],
            "default_rate": int(info["default_samplerate"]),
        }
        for index, info in enumerate(sd.query_devices())
        if info["max_input_channels"] > 0
    ]


def find_device(sd: Any, wanted: Union[str, int]) -> Dict[str, Any]:
    """The input device named by index, by name substring (case-insensitive) or 'default'."""
    devices = input_devices(sd)
    if str(wanted) == "default":
        default = sd.default.device[0]
        if default is None or default < 0:
            default = next((d["index"] for d in devices if d["name"] == "default"), -1)
        matches = [d for d in devices if d["index"] == default]
    elif isinstance(wanted, int) or str(wanted).isdigit():
        matches = [d for d in devices if d["index"] == int(wanted)]
    else:
        matches = [d for d in devices if str(wanted).casefold() in d["name"].casefold()]
    if not matches:
        listed = ", ".join(f"{d['index']}: {d['name']}" for d in devices) or "none"
        raise SourceUnavailable(
            f"no input device {wanted!r} (input devices now: {listed}); see `birdd devices`"
        )
    return matches[0]


def reinitialise_portaudio(sd: Any) -> None:
    """Make PortAudio list devices again; only while no stream of this process is open."""
    with _portaudio_lock:
        if _open_streams == 0:
            sd._terminate()
            sd._initialize()


class DeviceConnection(Connection):
    """One open ``InputStream`` and the ring its callback fills."""

    def __init__(self, sd: Any, index: int, rate: int, channels: int, block_frames: int) -> None:
        global _open_streams
        self.rate = rate
        self.callbacks = 0
        self.overflows = 0
        self.callback_errors = 0
        self.ring = RingBuffer(int(CAPTURE_RING_S * rate), drop_oldest=True, channels=channels)
        self._times = np.zeros((TIMES, 2), dtype=np.float64)
        self._out = np.zeros((block_frames, channels), dtype=np.float32)
        self._read_at = 0
        try:
            self.stream = sd.InputStream(
                device=index,
                samplerate=rate,
                channels=channels,
                dtype="float32",
                blocksize=round(CALLBACK_S * rate),
                latency="high",
                callback=self._on_audio,
            )
            self.stream.start()
        except sd.PortAudioError as exc:
            raise SourceUnavailable(f"cannot open input {index} at {rate} Hz: {exc}") from None
        with _portaudio_lock:
            _open_streams += 1

    def _on_audio(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio's real-time callback: copy, timestamp, count; nothing that can wait."""
        try:
            delay = time_info.currentTime - time_info.inputBufferAdcTime
            if time_info.inputBufferAdcTime <= 0 or not 0.0 <= delay < MAX_ADC_DELAY_S:
                delay = frames / self.rate
            slot = self.callbacks % TIMES
            self._times[slot, 0] = self.ring.written
            self._times[slot, 1] = time.time() - delay
            self.callbacks += 1
            if status.input_overflow:
                self.overflows += 1
            self.ring.write(indata)
        except Exception:
            self.callback_errors += 1

    def read(self, timeout: float) -> Optional[Block]:
        first, count = self.ring.read_available(self._read_at, self._out, timeout)
        if count == 0:
            return None
        self._read_at = first + count
        return Block(self._out[:count], self._captured_at(first))

    def _captured_at(self, frame: int) -> Optional[float]:
        """Capture time of ``frame`` from the latest callback at or before it."""
        known = self._times[: min(self.callbacks, TIMES)]
        before = known[known[:, 0] <= frame]
        if len(before) == 0:
            return None
        index, epoch = before[np.argmax(before[:, 0])]
        return float(epoch + (frame - index) / self.rate)

    def lost(self) -> Optional[str]:
        if not self.stream.active:
            return "the audio stream stopped (device unplugged or sound server gone)"
        return None

    def close(self) -> None:
        global _open_streams
        try:
            self.stream.abort(ignore_errors=True)
            self.stream.close(ignore_errors=True)
        except Exception:
            pass
        with _portaudio_lock:
            _open_streams = max(0, _open_streams - 1)


class DeviceSource(LiveSource):
    """A microphone or line input by name substring, index or 'default'."""

    def __init__(
        self,
        wanted: Union[str, int],
        policy: ReconnectPolicy,
        block_s: float,
        sample_rate: Optional[int] = None,
        channels: Optional[int] = None,
    ) -> None:
        """``channels``: how many to capture (None, for the downmix: the device's first two;
        sound servers offer 32 copies of a mono monitor, microphones have one or two)."""
        super().__init__(str(wanted), policy)
        self._sd = import_sounddevice()
        self.wanted = wanted
        self._rate = sample_rate
        try:
            device = find_device(self._sd, wanted)
        except SourceUnavailable:
            if policy.require_at_start:
                raise
            device = None
        self.sample_rate = self._choose_rate(device)
        self.channels = channels or (min(device["channels"], MIX_CHANNELS) if device else 1)
        self._block_frames = max(1, int(block_s * self.sample_rate))
        self._connection: Optional[DeviceConnection] = None
        self._device_name = device["name"] if device else str(wanted)
        self._connects = 0

    def _choose_rate(self, device: Optional[Dict[str, Any]]) -> int:
        if self._rate is not None or device is None:
            return self._rate or PREFERRED_RATE
        try:
            self._sd.check_input_settings(device["index"], samplerate=PREFERRED_RATE)
            return PREFERRED_RATE
        except Exception:
            return device["default_rate"]

    def connect(self) -> Connection:
        if self._connects:
            reinitialise_portaudio(self._sd)
        self._connects += 1
        device = find_device(self._sd, self.wanted)
        if device["channels"] < self.channels:
            raise SourceUnavailable(
                f"{device['name']} has {device['channels']} input channel(s), "
                f"audio.channels needs {self.channels}"
            )
        self._device_name = device["name"]
        self._connection = DeviceConnection(
            self._sd, device["index"], self.sample_rate, self.channels, self._block_frames
        )
        return self._connection

    def describe(self) -> str:
        return (
            f"capturing {self._device_name!r} at {self.sample_rate} Hz, {self.channels} channel(s)"
        )

    def status(self) -> str:
        status = super().status()
        connection = self._connection
        if connection is not None and connection.overflows:
            status += f"; {connection.overflows} input overflow(s)"
        if connection is not None and connection.callback_errors:
            status += f"; {connection.callback_errors} failed callback(s)"
        return status
