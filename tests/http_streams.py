"""Live HTTP audio streams on 127.0.0.1 for tests and benchmarks: every GET gets an endless
WAV (a recording looped, int16 at its own rate) sent at real time, as an Icecast-style
microphone would send it; ``/N.wav`` starts the loop N x 7.3 s in, so that streams started
together do not carry the same audio.

The pacing is the server's: a client that reads faster than real time waits on the socket,
and one that reads slower is the client's problem (the socket buffer fills, then what is due
waits in the server for that client), as with a real stream."""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import time
from pathlib import Path
from typing import List, Optional, Sequence

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


class Client:
    """One connection: its request as it arrives, then the stream's position and the bytes
    due but not yet taken by the client's socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.request = b""
        self.position: Optional[int] = None
        self.began = 0.0
        self.sent = 0
        self.pending = b""


class StreamServer:
    """An HTTP server on 127.0.0.1 (a free port) serving ``/N.wav`` in real time, every client
    from one selector thread: a thread per client cost the bench ~0.15 of its 2 cores at 250
    streams, CPU taken from the birdd it measures (a real site's microphones are elsewhere)."""

    def __init__(self, recordings: Sequence[Path]) -> None:
        self.audio = LoopedRecordings(recordings)
        self.stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._clients: List[Client] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.port}/{index}.wav"

    def _serve(self) -> None:
        next_tick = time.monotonic()
        while not self.stopping.is_set():
            for key, events in self._selector.select(max(0.0, next_tick - time.monotonic())):
                if key.data is None:
                    self._accept()
                elif events & selectors.EVENT_READ:
                    self._receive(key.data)
                else:
                    self._flush(key.data)
            if time.monotonic() >= next_tick:
                next_tick += CHUNK_S
                for client in list(self._clients):
                    self._send_due(client)
        for client in self._clients:
            client.sock.close()
        self._listener.close()

    def _accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        client = Client(sock)
        self._clients.append(client)
        self._selector.register(sock, selectors.EVENT_READ, client)

    def _receive(self, client: Client) -> None:
        try:
            data = client.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        if client.position is not None:
            return  # a streaming client sends nothing more that matters
        client.request += data
        if b"\r\n\r\n" in client.request:
            self._start(client)

    def _start(self, client: Client) -> None:
        path = client.request.split(b" ", 2)[1].decode("latin-1") if b" " in client.request else ""
        try:
            index = int(path.strip("/").removesuffix(".wav"))
        except ValueError:
            client.pending = b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"
            self._flush(client, close_after=True)
            return
        rate = self.audio.rate
        client.position, client.began = int(index * OFFSET_STEP_S * rate), time.monotonic()
        head = b"HTTP/1.0 200 OK\r\nContent-Type: audio/wav\r\n\r\n"
        client.pending = head + wav_header(rate)
        self._send_due(client)

    def _send_due(self, client: Client) -> None:
        """Queue the audio due by now (HEAD_START_S ahead) and send what the socket takes."""
        if client.position is None:
            return
        rate = self.audio.rate
        due = int((time.monotonic() - client.began + HEAD_START_S) * rate)
        if due > client.sent:
            client.pending += self.audio.chunk(client.position + client.sent, due - client.sent)
            client.sent = due
        self._flush(client)

    def _flush(self, client: Client, close_after: bool = False) -> None:
        try:
            taken = client.sock.send(client.pending) if client.pending else 0
        except (BlockingIOError, InterruptedError):
            taken = 0
        except OSError:
            self._drop(client)
            return
        client.pending = client.pending[taken:]
        if close_after and not client.pending:
            self._drop(client)
            return
        wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.pending else 0)
        if client in self._clients and self._selector.get_key(client.sock).events != wanted:
            self._selector.modify(client.sock, wanted, client)

    def _drop(self, client: Client) -> None:
        if client in self._clients:
            self._clients.remove(client)
            self._selector.unregister(client.sock)
            client.sock.close()

    def __enter__(self) -> StreamServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        self._thread.join(timeout=5)
