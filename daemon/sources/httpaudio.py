"""HTTP and HTTPS audio streams (WAV, MP3, AAC: network recorders, Icecast) read by the
process's one stream reader (``streamreader``) instead of a thread each, with
``audio.decoder: pyav``.

The request, the TLS handshake and the response's head are done here, on the input's own
supervisor thread with the watchdog as timeout; then the socket goes to the reader, which
hands each arrival to the stream's decoder: WAV is parsed here (its PCM needs no codec), MP3
and AAC go through PyAV's codec parser. Anything else (RTSP, Ogg and other containers) is not
ours: the caller gives it a PyAV thread. So is an https server whose certificate the system's
CAs do not vouch for (a recorder's self-signed one), or whose TLS fails otherwise: FFmpeg
reads it without checking, as it did before this reader existed, and this reader does not
lower that bar for everyone else.

The few lines of HTTP are our own: ``http.client`` cannot hand its socket over (its buffered
reader may already hold the first audio) and refuses SHOUTcast's ``ICY 200 OK`` status line.
"""

from __future__ import annotations

import base64
import functools
import socket
import ssl
from dataclasses import dataclass
from typing import Dict, Optional, Tuple
from urllib.parse import unquote, urljoin, urlsplit

from birdd.daemon import __version__
from birdd.daemon.sources.base import Block, SourceError
from birdd.daemon.sources.live import Connection
from birdd.daemon.sources.startgate import StartSlot
from birdd.daemon.sources.streamblocks import BlockQueue, RealTimePace, Reblocker, StreamRequest
from birdd.daemon.sources.streambody import CodedBody, StreamBody, WavBody
from birdd.daemon.sources.streamreader import ReadStream, StreamReader

MAX_REDIRECTS = 5
MAX_HEAD_BYTES = 16384
SNIFF_BYTES = 4
WAV_TYPES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave")
CODED_TYPES = {
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/aac": "aac",
    "audio/aacp": "aac",
    "audio/x-aac": "aac",
}


class NotOurs(Exception):
    """The stream is there but this reader does not read it (another format, a certificate
    the system does not trust)."""


@dataclass
class HttpResponse:
    sock: socket.socket
    content_type: str
    body: bytes
    """What already came after the head (at least ``SNIFF_BYTES``)."""


def _request(parts, path: str) -> bytes:
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    lines = [f"GET {path} HTTP/1.0", f"Host: {host}", f"User-Agent: birdd/{__version__}"]
    lines.append("Accept: */*")
    if parts.username is not None:
        user = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        lines.append("Authorization: Basic " + base64.b64encode(user.encode()).decode())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _read_head(sock: socket.socket) -> Tuple[bytes, bytes]:
    """The response head and what came after it (at least SNIFF_BYTES when not a redirect)."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD_BYTES:
            raise SourceError(f"no end to the HTTP response head in {MAX_HEAD_BYTES} bytes")
        chunk = sock.recv(4096)
        if not chunk:
            raise SourceError("the server closed the connection before answering")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    return head, body


def _head_fields(head: bytes) -> Tuple[int, str, Dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(None, 2)
    if len(status) < 2 or not status[1].isdigit() or status[0].split("/")[0] not in ("HTTP", "ICY"):
        raise SourceError(f"not an HTTP answer: {lines[0][:80]!r}")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(status[1]), " ".join(status[2:]), fields


@functools.lru_cache(maxsize=1)
def tls_context() -> ssl.SSLContext:
    """The system's CAs and Python's defaults, loaded once (26 ms a load: 250 streams start)."""
    return ssl.create_default_context()


def open_http(url: str, timeout_s: float) -> HttpResponse:
    """GET ``url`` (HTTP/1.0: no chunked body), following redirects. Raises SourceError (one
    line) when the server is not there or refuses, NotOurs when it is not HTTP(S) or its TLS
    fails (a certificate that does not check out)."""
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise NotOurs(url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        default_port = 443 if scheme == "https" else 80
        try:
            sock = socket.create_connection((parts.hostname, parts.port or default_port), timeout_s)
        except OSError as exc:
            raise SourceError(f"cannot connect: {exc.strerror or exc}") from None
        try:
            if scheme == "https":
                sock = tls_context().wrap_socket(sock, server_hostname=parts.hostname)
            sock.sendall(_request(parts, path))
            head, body = _read_head(sock)
            status, reason, fields = _head_fields(head)
            if status in (301, 302, 303, 307, 308) and "location" in fields:
                sock.close()
                url = urljoin(url, fields["location"])
                continue
            if status != 200:
                raise SourceError(f"HTTP {status} {reason}".strip())
            while len(body) < SNIFF_BYTES:
                chunk = sock.recv(4096)
                if not chunk:
                    raise SourceError("the stream ended before its first audio")
                body += chunk
        except ssl.SSLError:  # untrusted, or TLS this Python will not speak: FFmpeg may
            sock.close()
            raise NotOurs(url) from None
        except socket.timeout:
            sock.close()
            raise SourceError(f"no answer within {timeout_s:g} s") from None
        except OSError as exc:
            sock.close()
            raise SourceError(f"the connection failed: {exc.strerror or exc}") from None
        except BaseException:
            sock.close()
            raise
        content_type = fields.get("content-type", "").split(";")[0].strip().lower()
        return HttpResponse(sock, content_type, body)
    raise SourceError(f"more than {MAX_REDIRECTS} redirects")


def stream_format(content_type: str, head: bytes) -> Optional[str]:
    """'wav', 'mp3' or 'aac' from the content type, else from the first bytes; None for
    anything else."""
    if content_type in WAV_TYPES:
        return "wav"
    if content_type in CODED_TYPES:
        return CODED_TYPES[content_type]
    if content_type not in ("", "application/octet-stream", "audio/x-unknown"):
        return None
    if head.startswith(b"RIFF"):
        return "wav"
    if head.startswith(b"ID3"):
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:
        return "aac"  # ADTS: 12 sync bits, then layer 00
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "mp3"
    return None


class HttpAudioConnection(Connection, ReadStream):
    """An HTTP(S) stream on the shared reader: the reader feeds it bytes, it queues blocks
    at the model's rate for its supervisor."""

    def __init__(
        self,
        response: HttpResponse,
        body: StreamBody,
        block_frames: int,
        reader: StreamReader,
    ) -> None:
        self.sock = response.sock
        self.kind = body.kind
        self._body, self._reader = body, reader
        self._reblocker = Reblocker(block_frames)
        self._pace = RealTimePace(body.rate)
        self._blocks = BlockQueue()
        self._ended: Optional[str] = None
        self.sock.setblocking(False)
        try:
            self.feed(response.body)
        except BaseException:
            self.sock.close()
            raise
        reader.add(self)

    def feed(self, data: bytes) -> float:
        block = self._reblocker.add(self._body.decode(data))
        if block is None:
            return 0.0
        self._blocks.put(block, self._body.rate)
        return self._pace.delivered(len(block))

    def ended(self, reason: str) -> None:
        self._ended = reason

    def read(self, timeout: float) -> Optional[Block]:
        return self._blocks.get(timeout)

    def lost(self) -> Optional[str]:
        if self._ended is None or not self._blocks.empty():
            return None
        return self._ended

    def close(self) -> None:
        self._reader.remove(self)


class FailedConnection(Connection):
    """An attempt that failed before any audio: the supervisor sees why at once and backs off."""

    def __init__(self, reason: str) -> None:
        self._reason = reason

    def read(self, timeout: float) -> Optional[Block]:
        return None

    def lost(self) -> Optional[str]:
        return self._reason


def open_shared(
    request: StreamRequest, slot: StartSlot, reader: StreamReader
) -> Optional[Connection]:
    """A connection on the shared reader, its start slot given back once the server has
    answered (no probing follows); a failed one (slot given back too) when the server is not
    there or refuses; None when the stream is not ours (the slot still held, nothing open)."""
    try:
        response = open_http(request.url, request.timeout_s)
    except NotOurs:
        return None
    except SourceError as exc:
        slot.release()
        return FailedConnection(str(exc))
    kind = stream_format(response.content_type, response.body[:16])
    if kind is None:
        response.sock.close()
        return None
    slot.release()  # the costly part of a start (connecting, the answer) is over: no probing
    channels, rate = request.channels, request.rate
    body = WavBody(channels, rate) if kind == "wav" else CodedBody(kind, channels, rate)
    try:
        return HttpAudioConnection(response, body, request.block_frames, reader)
    except SourceError as exc:
        return FailedConnection(str(exc))
