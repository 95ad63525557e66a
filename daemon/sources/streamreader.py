"""One thread reading every HTTP(S) audio stream of the process.

A thread per stream (PyAV) cost 1.5 cores for 250 real-time WAV streams on 2 cores, half of
it system time: each thread woke for every packet and for FFmpeg's 100 ms poll, and fought
the others for the GIL. One thread waiting on all the sockets at once (``selectors``) and
decoding whatever arrived took 0.16 cores for the same 250 streams.

The reader knows sockets and pacing only; what the bytes mean is the stream's job
(``ReadStream.feed``). A stream that runs ahead of real time is taken out of the selector
until it is due again, so its server feels the pace through TCP, as with ffmpeg's ``-re``.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import selectors
import socket
import ssl
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from typing import Callable, Deque, List, Optional, Set, Tuple

from birdd.daemon.sources.base import SourceError

log = logging.getLogger("birdd")

RECV_BYTES = 65536
NOT_YET = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
"""Nothing to read now: a TLS socket says so with its own errors (half a record came)."""


class ReadStream(ABC):
    """A connected, non-blocking socket whose bytes the reader hands over as they come."""

    sock: socket.socket

    @abstractmethod
    def feed(self, data: bytes) -> float:
        """Decode ``data``; the seconds to wait before reading more (0: read on). Raises
        SourceError when the bytes cannot be audio."""

    @abstractmethod
    def ended(self, reason: str) -> None:
        """The stream is over (``reason`` in words); its socket is closed by the reader."""


class StreamReader:
    """The selector thread; streams come and go from any thread through ``add``/``remove``."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_in, self._wake_out = socket.socketpair()
        self._wake_in.setblocking(False)
        self._wake_out.setblocking(False)
        self._selector.register(self._wake_in, selectors.EVENT_READ, None)
        self._orders: Deque[Tuple[Callable[[ReadStream], None], ReadStream]] = deque()
        self._lock = threading.Lock()
        self._paused: List[Tuple[float, int, ReadStream]] = []
        self._live: Set[ReadStream] = set()
        self._sequence = itertools.count()
        self._thread = threading.Thread(target=self._run, name="stream reader", daemon=True)
        self._thread.start()

    def add(self, stream: ReadStream) -> None:
        self._order(self._add, stream)

    def remove(self, stream: ReadStream) -> None:
        """Stop reading ``stream`` and close its socket (soon, on the reader's thread)."""
        self._order(self._remove, stream)

    def _order(self, action: Callable[[ReadStream], None], stream: ReadStream) -> None:
        with self._lock:
            self._orders.append((action, stream))
        with contextlib.suppress(BlockingIOError):  # a full wake-up pipe: it is awake anyway
            self._wake_out.send(b"\0")

    def _run(self) -> None:
        while True:
            events = self._selector.select(self._next_resume())
            for key, _ in events:
                if key.data is None:
                    self._take_orders()
                elif key.data in self._live:
                    self._read(key.data)
            self._resume_due()

    def _take_orders(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_in.recv(4096):
                pass
        with self._lock:
            orders, self._orders = list(self._orders), deque()
        for action, stream in orders:
            action(stream)

    def _add(self, stream: ReadStream) -> None:
        try:
            self._selector.register(stream.sock, selectors.EVENT_READ, stream)
        except (ValueError, OSError) as exc:  # closed meanwhile: that stream ends, not the thread
            stream.sock.close()
            stream.ended(f"the connection failed: {exc}")
            return
        self._live.add(stream)

    def _remove(self, stream: ReadStream) -> None:
        if stream not in self._live:
            return
        self._live.discard(stream)
        if stream.sock in self._selector.get_map():
            self._selector.unregister(stream.sock)
        stream.sock.close()

    def _read(self, stream: ReadStream) -> None:
        """Read what arrived; for TLS, also what the socket already decrypted, which the
        selector cannot see."""
        while self._read_once(stream) and _decrypted(stream.sock):
            pass

    def _read_once(self, stream: ReadStream) -> bool:
        """One read and its feed; False when the stream waits (nothing more, paused, ended)."""
        try:
            data = stream.sock.recv(RECV_BYTES)
        except NOT_YET:
            return False
        except OSError as exc:
            self._end(stream, f"the connection failed: {exc.strerror or exc}")
            return False
        if not data:
            self._end(stream, "the stream ended")
            return False
        try:
            wait = stream.feed(data)
        except SourceError as exc:
            self._end(stream, str(exc))
            return False
        except Exception as exc:  # a decoder bug must not end every other stream
            log.exception("stream reader: reading a stream failed")
            self._end(stream, f"{type(exc).__name__}: {exc}")
            return False
        if wait > 0:
            self._selector.unregister(stream.sock)
            heapq.heappush(self._paused, (time.monotonic() + wait, next(self._sequence), stream))
            return False
        return True

    def _end(self, stream: ReadStream, reason: str) -> None:
        self._remove(stream)
        stream.ended(reason)

    def _next_resume(self) -> Optional[float]:
        if not self._paused:
            return None
        return max(0.0, self._paused[0][0] - time.monotonic())

    def _resume_due(self) -> None:
        now = time.monotonic()
        while self._paused and self._paused[0][0] <= now:
            _, _, stream = heapq.heappop(self._paused)
            if stream in self._live:
                self._selector.register(stream.sock, selectors.EVENT_READ, stream)
                if _decrypted(stream.sock):
                    self._read(stream)


def _decrypted(sock: socket.socket) -> bool:
    return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0


_READER: Optional[StreamReader] = None
_READER_LOCK = threading.Lock()


def process_reader() -> StreamReader:
    """The process's one reader, started by the first stream that needs it."""
    global _READER
    with _READER_LOCK:
        if _READER is None:
            _READER = StreamReader()
        return _READER
