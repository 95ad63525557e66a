"""Live HTTP audio streams on 127.0.0.1 for tests and benchmarks: every GET gets an endless
WAV (a recording looped, int16 at its own rate) sent at real time, as an Icecast-style
microphone would send it; ``/N.wav`` starts the loop N x 7.3 s in, so that streams started
together do not carry the same audio.

The pacing is the server's: a client that reads faster than real time waits on the socket,
and one that reads slower is the client's problem (the socket buffer fills, then the server
thread blocks in ``sendall``), as with a real stream."""

from __future__ import annotations

import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile

CHUNK_S = 0.25
HEAD_START_S = 0.5
"""Audio sent at once on connecting (a live server's own buffer), then CHUNK_S at a time."""
OFFSET_STEP_S = 7.3
STREAMING_SIZE = 0xFFFFFFFF
"""The RIFF and data sizes of a WAV of unknown length (what live WAV servers send)."""


def wav_header(rate: int, channels: int = 1) -> bytes:
    """A 16-bit PCM WAV header with the 'unknown length' sizes."""
    block = channels * 2
    return (
        b"RIFF"
        + struct.pack("<I", STREAMING_SIZE)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, 16)
        + b"data"
        + struct.pack("<I", STREAMING_SIZE)
    )


class LoopedRecordings:
    """The recordings as int16 mono at their own rates (all resampled to the first's rate)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        import soxr

        first, self.rate = soundfile.read(str(paths[0]), dtype="float32", always_2d=True)
        loops = [first.mean(axis=1)]
        for path in paths[1:]:
            samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
            loops.append(soxr.resample(samples.mean(axis=1), rate, self.rate))
        audio = np.concatenate(loops)
        self.pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()

    def chunk(self, start: int, frames: int) -> bytes:
        """``frames`` samples from sample ``start`` on, wrapping around the end."""
        total = len(self.pcm) // 2
        start %= total
        out = b""
        while frames > 0:
            take = min(frames, total - start)
            out += self.pcm[start * 2 : (start + take) * 2]
            frames -= take
            start = 0
        return out


class StreamServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) serving ``/N.wav`` in real time."""

    def __init__(self, recordings: Sequence[Path]) -> None:
        self.audio = LoopedRecordings(recordings)
        self.stopping = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.server.request_queue_size = 1024
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.port}/{index}.wav"

    def _handler(self) -> type:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                try:
                    index = int(self.path.strip("/").removesuffix(".wav"))
                except ValueError:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "audio/wav")
                self.end_headers()
                outer.stream(self.wfile, index)

            def log_message(self, *args: object) -> None:
                """Quiet: hundreds of clients would flood the bench's output."""

        return Handler

    def stream(self, out, index: int) -> None:
        """Send the WAV at real time until the client leaves or the server stops."""
        rate = self.audio.rate
        position = int(index * OFFSET_STEP_S * rate)
        began = time.monotonic()
        sent = 0
        try:
            out.write(wav_header(rate))
            while not self.stopping.is_set():
                due = int((time.monotonic() - began + HEAD_START_S) * rate)
                if due > sent:
                    out.write(self.audio.chunk(position + sent, due - sent))
                    out.flush()
                    sent = due
                self.stopping.wait(CHUNK_S)
        except (BrokenPipeError, ConnectionResetError):
            return

    def __enter__(self) -> StreamServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
