"""An ONNX Runtime session on the configured providers, falling back to CPU in one log line.

``onnxruntime-gpu`` lists the CUDA and TensorRT providers whether or not this machine can run
them. Where it cannot (no GPU, no driver, CUDA or cuDNN libraries missing), ONNX Runtime prints
its own coloured error and warning lines from C++ (and, when the session itself fails, an "EP
Error" banner with ``print``, on stdout, where the detections go), then runs on CPU. Here those
lines are collected while the session is created; when a configured provider did not start,
they become one warning naming the providers and ONNX Runtime's reason, and the session runs
on what did start (CPU as the last resort). When every provider started, what ONNX Runtime
printed is passed on to stderr unchanged.
"""

import contextlib
import io
import logging
import re
import sys

from .frames import write_all
from .native_log import captured_stderr

log = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
ORT_LINE = re.compile(rb"\[[EW]:onnxruntime:|^\s*(\x1b\[[0-9;]*m)+\s*$")
LIBRARY_ERROR = re.compile(rb"with error: ([^\n\x1b]+)")
MISSING_LIBRARIES = re.compile(rb"Please install (\w+) libraries")
NATIVE_ERROR = re.compile(rb"\[E:onnxruntime:[^\]]*\] ([^\n\x1b]+)")


def open_session(ort, path, options, providers):
    """``ort.InferenceSession`` on ``providers`` (in order), with ONNX Runtime's own chatter
    about providers that cannot start replaced by one warning; CPU when none of them starts."""
    printed = io.StringIO()
    with captured_stderr() as native, contextlib.redirect_stdout(printed):
        try:
            session = ort.InferenceSession(path, sess_options=options, providers=providers)
        except Exception:
            if providers == [CPU_PROVIDER]:
                raise
            session = None
    chatter = b"".join(native)
    if session is None:  # a provider failed the session itself: try CPU alone
        with captured_stderr() as native:
            session = ort.InferenceSession(path, sess_options=options, providers=[CPU_PROVIDER])
        chatter += b"".join(native)
    banner = printed.getvalue().encode("utf-8", "replace")  # only ONNX Runtime prints here
    dropped = [name for name in providers if name not in session.get_providers()]
    if dropped:
        log.warning(
            "ONNX Runtime could not start %s here (%s): running on %s",
            ", ".join(dropped),
            reason(chatter + banner),
            ", ".join(session.get_providers()),
        )
        chatter = b"".join(line for line in chatter.splitlines(True) if not ORT_LINE.search(line))
        banner = b""
    if (chatter + banner).strip():
        sys.stderr.flush()
        write_all(2, chatter + banner)
    return session


def reason(chatter):
    """ONNX Runtime's reasons for providers that did not start, from what it printed."""
    found = [match.decode("utf-8", "replace") for match in LIBRARY_ERROR.findall(chatter)[:1]]
    for name in MISSING_LIBRARIES.findall(chatter):
        found.append(name.decode("utf-8", "replace") + " libraries not found")
    if not found:
        found = [match.decode("utf-8", "replace") for match in NATIVE_ERROR.findall(chatter)[:1]]
    unique = [text.strip() for index, text in enumerate(found) if text not in found[:index]]
    return "; ".join(unique) or "no GPU, or no CUDA/TensorRT libraries for it"
