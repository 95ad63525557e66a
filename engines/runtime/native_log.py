"""Keep TFLite's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." off stderr.

LiteRT (ai-edge-litert) and tflite-runtime print it from C++ when an interpreter first
allocates its tensors, through TFLite's minimal logger, which writes straight to file
descriptor 2 at INFO and above. There is no supported way to turn it off from Python: the
minimal logger does not read TF_CPP_MIN_LOG_LEVEL (ai-edge-litert 2.3.0 prints the line at
every level), its SetMinimumLogSeverity is a C++ call the Python packages do not expose
(google-ai-edge/LiteRT#7420), and the interpreter option that drops the default delegates
drops XNNPACK itself, the engine's speed. So while a TFLite call that may print it runs, fd 2
points at a temporary file; afterwards everything written there except that one line goes to
the real stderr, in order (so the runtime's errors, and lines other threads logged meanwhile,
still appear). ``captured_stderr`` is the same redirection for other runtimes' chatter (ONNX
Runtime's lines when a GPU provider cannot start: ``onnx_session.py``).
"""

import contextlib
import os
import sys
import tempfile
import threading

from .frames import write_all

DELEGATE_BANNER = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
_redirecting = threading.Lock()  # fd 2 is one per process


@contextlib.contextmanager
def captured_stderr():
    """Run the block with what it writes on fd 2 (C++ code included) collected instead of
    printed: the yielded list holds those bytes afterwards, for the caller to print or drop."""
    output = []  # type: list
    with _redirecting, tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: nothing to collect
            yield output
            return
        os.dup2(captured.fileno(), 2)
        try:
            yield output
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            output.append(captured.read())


@contextlib.contextmanager
def without_delegate_banner():
    """Run the block with TFLite's XNNPACK INFO line dropped from what it prints on fd 2."""
    output = []  # type: list
    try:
        with captured_stderr() as output:
            yield
    finally:
        lines = b"".join(output).splitlines(True)
        kept = [line for line in lines if line.rstrip(b"\r\n") != DELEGATE_BANNER]
        if kept:
            write_all(2, b"".join(kept))
