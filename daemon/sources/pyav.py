"""Network streams decoded inside the daemon by PyAV (FFmpeg's libraries), ``audio.decoder:
pyav``: one thread per stream instead of one ffmpeg process, so hundreds of streams do not
mean hundreds of processes (~10 MB of memory and a pipe each).

Same contract as the ffmpeg source: audio at the model's rate, every end of the stream is
"source lost", the watchdog covers a stall (PyAV's read timeout too), the supervisor in
``live`` reopens it with backoff, and starts go through the process's start gate. Like
ffmpeg's ``-re`` on http(s), the decoder never runs more than ``AHEAD_S`` ahead of the wall
clock, so a file on a web server arrives as live audio (``streamblocks``).
"""

from __future__ import annotations

import threading
from typing import Any, Dict, Optional
from urllib.parse import urlsplit

from birdd.daemon.sources.base import Block, SourceError
from birdd.daemon.sources.ffmpeg import PROBE_BYTES, PROBE_MICROS, NetworkSource
from birdd.daemon.sources.httpaudio import HttpAudioConnection, open_shared
from birdd.daemon.sources.live import Connection
from birdd.daemon.sources.startgate import StartSlot
from birdd.daemon.sources.streamblocks import (
    BlockQueue,
    RealTimePace,
    Reblocker,
    StreamRequest,
)
from birdd.daemon.sources.streamreader import process_reader


def open_options(url: str) -> Dict[str, str]:
    """The demuxer options the ffmpeg command line gives (TCP for RTSP, short probing)."""
    options = {"probesize": PROBE_BYTES, "analyzeduration": PROBE_MICROS}
    if urlsplit(url).scheme.lower() in ("rtsp", "rtsps"):
        options["rtsp_transport"] = "tcp"
    return options


class PyavConnection(Connection):
    """A decoder thread filling a bounded queue with blocks; it holds its start slot until the
    first block or the end."""

    def __init__(self, request: StreamRequest, slot: StartSlot) -> None:
        self.url, self.channels, self.rate = request.url, request.channels, request.rate
        self._request, self._slot = request, slot
        self._blocks = BlockQueue()
        self._closing = threading.Event()
        self._ended: Optional[str] = None
        self._thread = threading.Thread(target=self._decode, name=f"pyav {self.url}", daemon=True)
        self._thread.start()

    def _decode(self) -> None:
        """The thread: open, decode until the end, an error or ``close``. The container is
        used and closed by this thread only (PyAV objects are not for sharing)."""
        import av

        options, timeout_s = open_options(self.url), self._request.timeout_s
        try:
            with av.open(self.url, options=options, timeout=timeout_s) as box:
                layout = "mono" if self.channels == 1 else "stereo"
                resampler = av.AudioResampler(format="flt", layout=layout, rate=self.rate)
                self._pump(box.decode(box.streams.audio[0]), resampler)
            self._ended = "the stream ended"
        except IndexError:
            self._ended = "no audio stream in it"
        except Exception as exc:  # av.error.* and OSError: the reason, for the supervisor
            self._ended = f"PyAV: {exc}".splitlines()[0]
        finally:
            self._slot.release()

    def _pump(self, frames: Any, resampler: Any) -> None:
        """Resample, cut into blocks, hold back to real time, queue."""
        blocks, pace = Reblocker(self._request.block_frames), RealTimePace(self.rate)
        for frame in frames:
            for out in resampler.resample(frame):
                block = blocks.add(out.to_ndarray().reshape(-1, self.channels))
                if block is None:
                    continue
                self._slot.release()
                self._blocks.put(block, self.rate)
                wait = pace.delivered(len(block))
                if (wait and self._closing.wait(wait)) or self._closing.is_set():
                    return

    def read(self, timeout: float) -> Optional[Block]:
        return self._blocks.get(timeout)

    def lost(self) -> Optional[str]:
        if self._thread.is_alive() or not self._blocks.empty():
            return None
        return self._ended or "the decoder stopped"

    def close(self) -> None:
        """Ask the thread to stop; it ends after its current frame, or within the read timeout
        on a stalled stream (then on its own, as a daemon thread)."""
        self._closing.set()
        self._thread.join(timeout=1.0)
        self._slot.release()


class PyavSource(NetworkSource):
    """A URL decoded in-process, reopened whenever it ends or stalls."""

    _via = "PyAV"

    def check_decoder(self) -> None:
        try:
            import av  # noqa: F401 (only whether it is there)
        except ImportError:
            raise SourceError(
                f"{self.name}: audio.decoder pyav needs PyAV: pip install 'birdd[pyav]' "
                "(or set audio.decoder: ffmpeg)"
            ) from None
        if self.channels > 2:
            raise SourceError(f"{self.name}: audio.decoder pyav reads 1 or 2 channels")

    def start(self, slot: StartSlot) -> Connection:
        """HTTP(S) WAV/MP3/AAC on the process's one stream reader; anything else (or a
        stream that turns out to be another format, or an untrusted certificate) on a PyAV
        thread of its own."""
        request = StreamRequest(
            self.url, self.channels, self.sample_rate, self._block_frames, self.policy.watchdog_s
        )
        if urlsplit(self.url).scheme.lower() in ("http", "https"):
            shared = open_shared(request, slot, process_reader())
            if isinstance(shared, HttpAudioConnection):
                self._via = f"the stream reader ({shared.kind})"
            if shared is not None:
                return shared
        self._via = "PyAV"
        return PyavConnection(request, slot)

    def describe(self) -> str:
        return f"receiving {self.name} through {self._via}"
