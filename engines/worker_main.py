"""The engine worker: runs one model in its own process, for ``birdd.engines.worker``.

Started as a script path (``/usr/bin/python3 /path/to/worker_main.py``), possibly by another
interpreter than the daemon's, one that has the runtime's bindings (TensorRT exists only for each
JetPack's system Python) but not birdd. So this file imports nothing from birdd, needs only the
standard library, numpy and the runtime, and keeps to Python 3.6 syntax.

Protocol, on stdin (requests) and stdout (replies), one frame each way per call::

    frame   = struct ">II" (header length, payload length) + header + payload
    header  = UTF-8 JSON object
    payload = raw array bytes (C order) described by the header's "shape" and "dtype"

Requests: ``{"op": "load", ...}`` (model path, engine type, batch size, output names, the
engine's config), ``{"op": "predict" | "embed", "shape": [B, W], "dtype": "float32"}`` + the
batch, ``{"op": "close"}``. Replies: ``{"ok": true, ...}`` (+ ``shape``/``dtype`` and the
array for predict/embed), or ``{"ok": false, "kind": "engine" | "runtime_missing",
"error": "one line"}``. Anything the runtimes print goes to stderr; stdout carries frames only.
The worker exits when stdin closes, so it never outlives the daemon.
"""

import json
import os
import struct
import sys

PROTOCOL = 1
FRAME = struct.Struct(">II")
CPU_PROVIDER = "CPUExecutionProvider"


class WorkerError(Exception):
    """A one-line failure sent back to the daemon instead of a traceback."""

    def __init__(self, message, kind="engine"):
        Exception.__init__(self, message)
        self.kind = kind


def first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


def log(message):
    sys.stderr.write(f"birdd worker {os.getpid()}: {message}\n")
    sys.stderr.flush()


# -- frames ---------------------------------------------------------------------------------


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
    head = read_exact(stream, FRAME.size)
    if head is None:
        return None, None
    header_size, payload_size = FRAME.unpack(bytes(head))
    header = json.loads(bytes(read_exact(stream, header_size) or b"").decode("utf-8"))
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
    body = json.dumps(header).encode("utf-8")
    data = memoryview(payload).cast("B")
    write_all(fd, FRAME.pack(len(body), len(data)) + body)
    if len(data):
        write_all(fd, data)


# -- runtimes -------------------------------------------------------------------------------


class Model:
    """A loaded model: ``run(batch, role)`` with role ``scores`` or ``embeddings``."""

    def __init__(self, request, numpy):
        self.np = numpy
        self.path = str(request["model"])
        self.engine = str(request["engine"])
        self.window = int(request["window_samples"])
        self.batch = int(request["batch_size"])
        self.outputs = dict(request.get("outputs") or {})
        self.config = dict(request.get("config") or {})
        self.runtime = ""

    def padded(self, batch, size):
        if batch.shape[0] == size:
            return batch
        full = self.np.zeros((size, batch.shape[1]), dtype=self.np.float32)
        full[: batch.shape[0]] = batch
        return full

    def no_output(self, role):
        if role == "embeddings":
            raise WorkerError(
                f"model {os.path.basename(self.path)} on engine {self.engine} has no embeddings"
            )
        raise WorkerError(f"model {self.path} has no {role} output")


class TFLiteModel(Model):
    def __init__(self, request, numpy):
        Model.__init__(self, request, numpy)
        interpreter_class = self.import_interpreter(self.config.get("runtime", "auto"))
        try:
            interpreter = interpreter_class(
                model_path=self.path, num_threads=int(self.config.get("threads", 2))
            )
            detail = interpreter.get_input_details()[0]
            if list(detail["shape"][1:]) != [self.window]:
                raise WorkerError(
                    f"model {self.path} takes input {detail['shape'].tolist()} but its sidecar "
                    f"says [B, {self.window}]: the sidecar belongs to another model"
                )
            interpreter.resize_tensor_input(detail["index"], [self.batch, self.window])
            interpreter.allocate_tensors()
        except WorkerError:
            raise
        except Exception as exc:
            raise WorkerError(f"cannot load TFLite model {self.path}: {first_line(exc)}") from None
        self.interpreter = interpreter
        self.input_index = detail["index"]
        self.indices = {}
        details = interpreter.get_output_details()
        for role in ("scores", "embeddings"):
            wanted = self.outputs.get(role)
            if wanted is None:
                self.indices[role] = details[0]["index"] if role == "scores" else None
                continue
            found = [d["index"] for d in details if d["name"] == wanted]
            if not found:
                raise WorkerError(f"model {self.path} has no output named {wanted!r} ({role})")
            self.indices[role] = found[0]

    def import_interpreter(self, runtime):
        attempts = [
            ("litert", "ai_edge_litert.interpreter", "birdd (ai-edge-litert)"),
            ("tflite-runtime", "tflite_runtime.interpreter", "birdd[tflite-runtime]"),
        ]
        chosen = [a for a in attempts if runtime in ("auto", a[0])]
        for _name, module_name, _extra in chosen:
            try:
                module = __import__(module_name, fromlist=["Interpreter"])
            except ImportError:
                continue
            package = sys.modules.get(module_name.split(".")[0])
            version = getattr(package, "__version__", "") or getattr(module, "__version__", "")
            self.runtime = ("{} {}".format(module_name.split(".")[0], version)).strip()
            return module.Interpreter
        wanted = " or ".join(f"pip install '{a[2]}'" for a in chosen)
        raise WorkerError(
            f"no TFLite runtime is installed for {sys.executable}: {wanted}",
            "runtime_missing",
        )

    def run(self, batch, role):
        index = self.indices.get(role)
        if index is None:
            self.no_output(role)
        rows = batch.shape[0]
        self.interpreter.set_tensor(self.input_index, self.padded(batch, self.batch))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(index)[:rows]


class ONNXModel(Model):
    def __init__(self, request, numpy):
        Model.__init__(self, request, numpy)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise WorkerError(
                f"ONNX Runtime is not installed for {sys.executable} ({first_line(exc)}): "
                "pip install onnxruntime (or onnxruntime-gpu for CUDA/TensorRT)",
                "runtime_missing",
            ) from None
        self.runtime = f"onnxruntime {ort.__version__}"
        available = ort.get_available_providers()
        wanted = list(self.config.get("providers") or [CPU_PROVIDER])
        providers = [name for name in wanted if name in available]
        for name in wanted:
            if name not in available:
                log(f"ONNX Runtime provider {name} is not available here; skipping it")
        providers = providers or [CPU_PROVIDER]
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(self.config.get("threads", 2))
        inter_op = int(self.config.get("inter_op_threads", 1))
        options.inter_op_num_threads = inter_op
        if inter_op > 1:
            options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(self.path, sess_options=options, providers=providers)
        except Exception as exc:
            raise WorkerError(f"cannot load ONNX model {self.path}: {first_line(exc)}") from None
        inputs = session.get_inputs()
        shape = inputs[0].shape if len(inputs) == 1 else []
        fixed_window = len(shape) == 2 and isinstance(shape[1], int)
        if len(shape) != 2 or (fixed_window and shape[1] != self.window):
            raise WorkerError(
                f"model {self.path} takes {[(i.name, i.shape, i.type) for i in inputs]} but its "
                f"sidecar says one float [B, {self.window}] input: the sidecar belongs to another "
                "model"
            )
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        if self.fixed_batch is not None and self.batch > self.fixed_batch:
            raise WorkerError(
                f"model {self.path} has a fixed batch of {self.fixed_batch}: set "
                f"engine.batch_size to {self.fixed_batch} or less"
            )
        names = [output.name for output in session.get_outputs()]
        for role, wanted_name in self.outputs.items():
            if wanted_name not in names:
                raise WorkerError(
                    f"model {self.path} has no output named {wanted_name!r} ({role}); "
                    f"its outputs are {names}"
                )
        self.names = {
            "scores": self.outputs.get("scores", names[0]),
            "embeddings": self.outputs.get("embeddings"),
        }
        self.input_name = inputs[0].name
        self.session = session
        self.runtime += " on {}".format(", ".join(session.get_providers()))

    def run(self, batch, role):
        name = self.names.get(role)
        if name is None:
            self.no_output(role)
        rows = batch.shape[0]
        if self.fixed_batch is not None:
            batch = self.padded(batch, self.fixed_batch)
        try:
            result = self.session.run([name], {self.input_name: batch})[0]
        except Exception as exc:
            raise WorkerError(f"ONNX Runtime failed on {self.path}: {first_line(exc)}") from None
        return result[:rows]


MODELS = {"tflite": TFLiteModel, "onnx": ONNXModel}


# -- the loop -------------------------------------------------------------------------------


class Worker:
    def __init__(self):
        self.np = None
        self.model = None

    def numpy(self):
        if self.np is None:
            try:
                import numpy
            except ImportError as exc:
                raise WorkerError(
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
        if op in ("predict", "embed"):
            return self.score(header, payload, "scores" if op == "predict" else "embeddings")
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}, b""
        raise WorkerError(f"unknown request {op!r}")

    def load(self, header):
        np = self.numpy()
        engine = header.get("engine")
        if engine not in MODELS:
            raise WorkerError(
                "the engine worker runs {}, not {!r}".format(" or ".join(sorted(MODELS)), engine)
            )
        self.model = None
        self.model = MODELS[engine](header, np)
        reply = {
            "ok": True,
            "pid": os.getpid(),
            "protocol": PROTOCOL,
            "runtime": self.model.runtime,
            "python": ".".join(str(part) for part in sys.version_info[:3]),
            "numpy": np.__version__,
        }
        return reply, b""

    def score(self, header, payload, role):
        if self.model is None:
            raise WorkerError("engine worker asked to score before load")
        np = self.np
        shape = [int(size) for size in header["shape"]]
        if header.get("dtype") != "float32" or len(shape) != 2:
            raise WorkerError(f"engine worker takes float32 [B, W] batches, got {header!r}")
        batch = np.frombuffer(payload, dtype="<f4").reshape(shape)
        result = np.ascontiguousarray(self.model.run(batch, role), dtype="<f4")
        return {"ok": True, "shape": list(result.shape), "dtype": "float32"}, result.data


def main():
    # Frames go out on a private copy of stdout; fd 1 then points at stderr, so a runtime that
    # prints (some do, from C) cannot corrupt the protocol stream.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    stdin = open(0, "rb", buffering=0, closefd=False)  # noqa: SIM115 - lives as long as main
    worker = Worker()
    while True:
        try:
            header, payload = read_frame(stdin)
        except (EOFError, ValueError) as exc:
            log(f"bad request frame: {first_line(exc)}")
            return 2
        if header is None:
            return 0
        if header.get("op") == "close":
            write_frame(out_fd, {"ok": True})
            return 0
        try:
            reply, body = worker.handle(header, payload)
        except WorkerError as exc:
            reply, body = {"ok": False, "kind": exc.kind, "error": first_line(exc)}, b""
        except Exception as exc:  # a runtime's own error type: still one line, worker lives on
            message = f"{type(exc).__name__}: {first_line(exc)}"
            reply, body = {"ok": False, "kind": "engine", "error": message}, b""
        try:
            write_frame(out_fd, reply, body)
        except OSError:  # the daemon is gone
            return 0


if __name__ == "__main__":
    # The script's own folder (birdd/engines) must not shadow real packages (onnx, tflite).
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or os.curdir) == here:
        del sys.path[0]
    sys.exit(main())
