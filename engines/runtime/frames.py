"""The frames birdd and its engine worker exchange over the worker's stdin and stdout.

::

    frame   = struct ">II" (header length, payload length) + header + payload
    header  = UTF-8 JSON object
    payload = raw array bytes (C order) described by the header's "shape" and "dtype"

``PROTOCOL`` is the version of the requests and replies (worker_main.py lists them); the worker
states it in its replies and birdd refuses a worker that speaks another.
"""

import json
import os
import struct

PROTOCOL = 2  # 2: one run op returns the scores and embeddings of one invoke
FRAME = struct.Struct(">II")


def frame_head(header, payload_size):
    """The bytes before a frame's payload: lengths, then the JSON header."""
    body = json.dumps(header).encode("utf-8")
    return FRAME.pack(len(body), payload_size) + body


def parse_header(data):
    return json.loads(bytes(data).decode("utf-8"))


def read_exact(stream, size):
    """``size`` bytes from ``stream``, or None at end of file before the first byte."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    done = 0
    while done < size:
        count = stream.readinto(view[done:])
        if not count:
            if done == 0:
                return None
            raise EOFError("stdin closed in the middle of a frame")
        done += count
    return buffer


def read_frame(stream):
    """(header, payload) from a blocking binary stream; (None, None) at end of file."""
    head = read_exact(stream, FRAME.size)
    if head is None:
        return None, None
    header_size, payload_size = FRAME.unpack(bytes(head))
    header = parse_header(read_exact(stream, header_size) or b"")
    payload = read_exact(stream, payload_size) if payload_size else bytearray()
    if payload is None:
        raise EOFError("stdin closed in the middle of a frame")
    return header, payload


def write_all(fd, data):
    view = memoryview(data).cast("B")
    while len(view):
        written = os.write(fd, view)
        view = view[written:]


def write_frame(fd, header, payload=b""):
    data = memoryview(payload).cast("B")
    write_all(fd, frame_head(header, len(data)))
    if len(data):
        write_all(fd, data)
