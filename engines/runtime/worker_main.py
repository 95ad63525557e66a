"""The engine worker: runs one model in its own process, for ``birdd.engines.worker``.

Started as ``python /path/to/engines/runtime`` (see ``__main__.py``), possibly by another
interpreter than the daemon's, one without birdd. Requests arrive on stdin and replies leave on
stdout, one frame each way per call (``frames.py``):

Requests: ``{"op": "load", ...}`` (the model request of ``base.Model``), ``{"op": "run",
"roles": ["scores", "embeddings"], "shape": [B, W], "dtype": "float32"}`` + the batch (one
invoke of the model for every role asked), ``{"op": "ping"}``, ``{"op":
"close"}``; for TensorRT also ``{"op": "trt_info", "device": N}`` (the GPU's name, compute
capability and the TensorRT version) and ``{"op": "trt_build", "onnx", "out", "precision",
"max_batch", ...}`` (builds a plan into ``out``). Replies: ``{"ok": true, ...}`` (load,
trt_info and trt_build state ``protocol``, the worker's pid and its Python and numpy versions;
run adds ``shapes`` (one per role), ``dtype`` and the arrays one after another), or ``{"ok":
false, "kind": "engine" | "runtime_missing", "error": "one line"}``. Anything the runtimes
print goes to stderr; stdout carries frames only. The worker exits when stdin closes, so it
never outlives the daemon.
"""

import logging
import os
import sys

from .errors import ModelError, first_line
from .frames import PROTOCOL, read_frame, write_frame

log = logging.getLogger(__name__)


class Worker:
    def __init__(self):
        self.np = None
        self.model = None

    def numpy(self):
        """numpy, imported on the first request so that its absence is a reply, not a crash."""
        if self.np is None:
            try:
                import numpy
            except ImportError as exc:
                raise ModelError(
                    f"the engine worker's interpreter {sys.executable} has no numpy "
                    f"({first_line(exc)}): install numpy and the runtime for it, or set "
                    "engine.python to one that has them",
                    "runtime_missing",
                ) from None
            self.np = numpy
        return self.np

    def handle(self, header, payload):
        op = header.get("op")
        if op == "load":
            return self.load(header)
        if op == "run":
            return self.score(header, payload)
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}, b""
        if op == "trt_info":
            return self.trt_info(header)
        if op == "trt_build":
            return self.trt_build(header)
        raise ModelError(f"unknown request {op!r}")

    def described(self, reply):
        reply.update(
            ok=True,
            pid=os.getpid(),
            protocol=PROTOCOL,
            python=".".join(str(part) for part in sys.version_info[:3]),
            numpy=self.numpy().__version__,
        )
        return reply, b""

    def trt_info(self, header):
        self.numpy()
        from .trt_model import CudaContext, import_tensorrt

        trt, cuda = import_tensorrt()
        gpu = CudaContext(cuda, int(header.get("device", 0)))
        try:
            return self.described(gpu.info(trt))
        finally:
            gpu.release()

    def trt_build(self, header):
        np = self.numpy()
        from .trt_build import build_plan

        path = header.get("calibration")
        windows = np.load(path, mmap_mode="r") if path else None
        return self.described(build_plan(header, windows))

    def load(self, header):
        self.numpy()
        from .cpu_models import ONNXModel, TFLiteModel
        from .trt_model import TensorRTModel

        models = {"tflite": TFLiteModel, "onnx": ONNXModel, "tensorrt": TensorRTModel}
        engine = header.get("engine")
        if engine not in models:
            names = " or ".join(sorted(models))
            raise ModelError(f"the engine worker runs {names}, not {engine!r}")
        if self.model is not None:
            self.model.close()
        self.model = None
        self.model = models[engine](header)
        return self.described({"runtime": self.model.runtime})

    def score(self, header, payload):
        if self.model is None:
            raise ModelError("engine worker asked to score before load")
        np = self.numpy()
        shape = [int(size) for size in header["shape"]]
        roles = [str(role) for role in header.get("roles") or ["scores"]]
        if header.get("dtype") != "float32" or len(shape) != 2:
            raise ModelError(f"engine worker takes float32 [B, W] batches, got {header!r}")
        batch = np.frombuffer(payload, dtype="<f4").reshape(shape)
        results = [np.ascontiguousarray(out, dtype="<f4") for out in self.model.run(batch, roles)]
        shapes = [list(result.shape) for result in results]
        body = results[0].data if len(results) == 1 else b"".join(r.tobytes() for r in results)
        return {"ok": True, "shapes": shapes, "dtype": "float32"}, body


def error_reply(exc):
    if isinstance(exc, ModelError):
        return {"ok": False, "kind": exc.kind, "error": first_line(exc)}
    # a runtime's own error type: still one line, and the worker lives on
    return {"ok": False, "kind": "engine", "error": f"{type(exc).__name__}: {first_line(exc)}"}


def main():
    # Frames go out on a private copy of stdout; fd 1 then points at stderr, so a runtime that
    # prints (some do, from C) cannot corrupt the protocol stream.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format=f"birdd worker {os.getpid()}: %(message)s"
    )
    stdin = open(0, "rb", buffering=0, closefd=False)  # noqa: SIM115 - lives as long as main
    worker = Worker()
    while True:
        try:
            header, payload = read_frame(stdin)
        except (EOFError, ValueError) as exc:
            log.error("bad request frame: %s", first_line(exc))
            return 2
        if header is None:
            return 0
        if header.get("op") == "close":
            write_frame(out_fd, {"ok": True})
            return 0
        try:
            reply, body = worker.handle(header, payload)
        except Exception as exc:
            reply, body = error_reply(exc), b""
        try:
            write_frame(out_fd, reply, body)
        except OSError:  # the daemon is gone
            return 0
