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
batch, ``{"op": "close"}``; for TensorRT also ``{"op": "trt_info", "device": N}`` (the GPU's
name, compute capability and the TensorRT version) and ``{"op": "trt_build", "onnx", "out",
"precision", "max_batch", ...}`` (builds a plan into ``out``). Replies: ``{"ok": true, ...}``
(+ ``shape``/``dtype`` and the array for predict/embed), or ``{"ok": false, "kind":
"engine" | "runtime_missing", "error": "one line"}``. Anything the runtimes print goes to
stderr; stdout carries frames only. The worker exits when stdin closes, so it never outlives
the daemon.
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
        self.input_dtype = str(request.get("input_dtype", "float32"))
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

    def check_dtype(self, found):
        """``found``: the numpy name of the model's input type, against the sidecar's."""
        if found != self.input_dtype:
            raise WorkerError(
                f"model {self.path} takes {found} input but its sidecar says "
                f"{self.input_dtype}: birdd feeds float32 windows, use a model with float input"
            )

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
            self.check_dtype(self.np.dtype(detail["dtype"]).name)
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


# -- TensorRT -------------------------------------------------------------------------------
# The TensorRT calls live here, once: the worker runs them under a JetPack's system Python, and
# birdd.engines.tensorrt imports this module to run the same code in-process. Imports go through
# __import__ so this file still names no package beyond numpy and onnxruntime.

TRT_MISSING = (
    "TensorRT is not installed for {python} ({error}): pip install 'birdd[tensorrt]' (on a "
    "Jetson: the JetPack's python3-libnvinfer and pycuda; or engine.python: /usr/bin/python3)"
)


def import_tensorrt():
    """(tensorrt, pycuda.driver), or a runtime_missing WorkerError naming what to install."""
    try:
        trt = __import__("tensorrt")
        cuda = __import__("pycuda.driver", fromlist=["Device"])
    except ImportError as exc:
        message = TRT_MISSING.format(python=sys.executable, error=first_line(exc))
        raise WorkerError(message, "runtime_missing") from None
    return trt, cuda


def trt_major(trt):
    return int(str(trt.__version__).split(".")[0])


class CudaContext:
    """The device's primary CUDA context, pushed around each use from whichever thread calls
    (the daemon loads in one thread and scores in another; CUDA contexts are per thread)."""

    def __init__(self, cuda, index):
        try:
            cuda.init()
            count = cuda.Device.count()
        except Exception as exc:  # pycuda.driver.Error: no driver, no device
            raise WorkerError(f"CUDA is not usable here: {first_line(exc)}") from None
        if index >= count:
            raise WorkerError(
                f"engine.device is {index} but this machine has {count} CUDA device(s)"
            )
        self.cuda = cuda
        self.device = cuda.Device(index)
        self.context = self.device.retain_primary_context()

    def __enter__(self):
        self.context.push()
        return self

    def __exit__(self, *exc_info):
        self.cuda.Context.pop()
        return False

    def info(self, trt):
        major, minor = self.device.compute_capability()
        return {
            "device": str(self.device.name()),
            "compute_capability": f"{major}.{minor}",
            "trt_version": str(trt.__version__),
        }

    def release(self):
        self.context.detach()


def make_logger(trt):
    """A TensorRT logger that keeps its errors (for one-line messages) and prints the rest."""
    base = getattr(trt, "ILogger", None)
    if base is None:  # pragma: no cover - very old bindings
        logger = trt.Logger(trt.Logger.WARNING)
        logger.errors = []
        return logger

    class Collecting(base):
        def __init__(self):
            base.__init__(self)
            self.errors = []

        def log(self, severity, msg):
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg).strip())
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                log("TensorRT: " + str(msg).strip())

    return Collecting()


def last_error(logger, default):
    errors = [line for line in getattr(logger, "errors", []) if line]
    return first_line(Exception(errors[-1])) if errors else default


class NamedTensors:
    """TensorRT >= 8.5 (JetPack 5/6, desktop 10.x): tensors by name, execute_async_v3."""

    def __init__(self, trt, engine, context):
        self.trt, self.engine, self.context = trt, engine, context
        self.names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]

    def is_input(self, name):
        return self.engine.get_tensor_mode(name) == self.trt.TensorIOMode.INPUT

    def shape(self, name):
        return [int(size) for size in self.engine.get_tensor_shape(name)]

    def dtype(self, name):
        return self.trt.nptype(self.engine.get_tensor_dtype(name))

    def set_input_shape(self, name, shape):
        return self.context.set_input_shape(name, tuple(shape))

    def output_shape(self, name):
        return [int(size) for size in self.context.get_tensor_shape(name)]

    def bind(self, name, pointer):
        self.context.set_tensor_address(name, int(pointer))

    def execute(self, stream):
        return self.context.execute_async_v3(stream_handle=stream.handle)


class Bindings:
    """TensorRT 8.0-8.4 (JetPack 4.6 on a TX2: 8.2): binding indices, execute_async_v2."""

    def __init__(self, trt, engine, context):
        self.trt, self.engine, self.context = trt, engine, context
        self.names = [engine.get_binding_name(i) for i in range(engine.num_bindings)]
        self.pointers = [0] * len(self.names)

    def index(self, name):
        return self.engine.get_binding_index(name)

    def is_input(self, name):
        return self.engine.binding_is_input(self.index(name))

    def shape(self, name):
        return [int(size) for size in self.engine.get_binding_shape(self.index(name))]

    def dtype(self, name):
        return self.trt.nptype(self.engine.get_binding_dtype(self.index(name)))

    def set_input_shape(self, name, shape):
        return self.context.set_binding_shape(self.index(name), tuple(shape))

    def output_shape(self, name):
        return [int(size) for size in self.context.get_binding_shape(self.index(name))]

    def bind(self, name, pointer):
        self.pointers[self.index(name)] = int(pointer)

    def execute(self, stream):
        return self.context.execute_async_v2(bindings=self.pointers, stream_handle=stream.handle)


class TensorRTModel(Model):
    """A deserialized plan with page-locked host and device buffers for ``batch_size`` windows."""

    def __init__(self, request, numpy):
        Model.__init__(self, request, numpy)
        trt, cuda = import_tensorrt()
        self.trt, self.cuda = trt, cuda
        self.runtime = f"tensorrt {trt.__version__}"
        self.gpu = CudaContext(cuda, int(self.config.get("device", 0)))
        with self.gpu:
            self.load_plan()
            self.allocate()
        self.runtime += " on " + self.gpu.info(trt)["device"]

    def load_plan(self):
        trt = self.trt
        self.logger = make_logger(trt)
        self.trt_runtime = trt.Runtime(self.logger)
        try:
            with open(self.path, "rb") as stream:
                data = stream.read()
        except OSError as exc:
            raise WorkerError(f"cannot read TensorRT plan {self.path}: {first_line(exc)}") from None
        engine = self.trt_runtime.deserialize_cuda_engine(data)
        if engine is None:
            reason = last_error(self.logger, "TensorRT could not deserialize it")
            raise WorkerError(
                f"cannot load TensorRT plan {self.path}: {reason}: the file is corrupt or was "
                "built for another GPU or TensorRT version; rebuild it with 'birdd engines build'"
            )
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            reason = last_error(self.logger, "no error given")
            raise WorkerError(
                f"TensorRT cannot run plan {self.path} (out of GPU memory?): {reason}"
            )
        if hasattr(engine, "num_io_tensors"):
            self.io = NamedTensors(trt, engine, self.context)
        else:
            self.io = Bindings(trt, engine, self.context)

    def check_input(self):
        inputs = [name for name in self.io.names if self.io.is_input(name)]
        shape = self.io.shape(inputs[0]) if len(inputs) == 1 else []
        if len(shape) != 2 or shape[1] not in (-1, self.window):
            found = [(name, self.io.shape(name)) for name in inputs]
            raise WorkerError(
                f"TensorRT plan {self.path} takes {found} but its sidecar says one [B, "
                f"{self.window}] input: the sidecar belongs to another model"
            )
        self.check_dtype(self.np.dtype(self.io.dtype(inputs[0])).name)
        self.fixed_batch = shape[0] if shape[0] > 0 else None
        if self.fixed_batch is not None and self.batch > self.fixed_batch:
            raise WorkerError(
                f"TensorRT plan {self.path} has a fixed batch of {self.fixed_batch}: set "
                f"engine.batch_size to {self.fixed_batch} or less"
            )
        return inputs[0]

    def allocate(self):
        cuda = self.cuda
        self.input_name = self.check_input()
        rows = self.fixed_batch or self.batch
        if self.io.set_input_shape(self.input_name, (rows, self.window)) is False:
            raise WorkerError(
                f"TensorRT plan {self.path} does not take a batch of {rows}: rebuild it with "
                f"'birdd engines build' and --batch {rows} or more"
            )
        self.rows = rows
        self.stream = cuda.Stream()
        self.host, self.device = {}, {}
        for name in self.io.names:
            shape = [rows, self.window] if name == self.input_name else self.io.output_shape(name)
            if any(size < 0 for size in shape):
                raise WorkerError(f"TensorRT plan {self.path}: output {name} has shape {shape}")
            self.host[name] = cuda.pagelocked_empty(tuple(shape), self.io.dtype(name))
            self.device[name] = cuda.mem_alloc(max(self.host[name].nbytes, 1))
            self.io.bind(name, self.device[name])
        outputs = [name for name in self.io.names if name != self.input_name]
        for role, wanted in self.outputs.items():
            if wanted not in outputs:
                raise WorkerError(
                    f"TensorRT plan {self.path} has no output named {wanted!r} ({role}); its "
                    f"outputs are {outputs}"
                )
        self.names = {
            "scores": self.outputs.get("scores", outputs[0] if outputs else None),
            "embeddings": self.outputs.get("embeddings"),
        }

    def run(self, batch, role):
        name = self.names.get(role)
        if name is None:
            self.no_output(role)
        rows = batch.shape[0]
        used = self.fixed_batch or rows
        with self.gpu:
            if used != self.rows:
                if self.io.set_input_shape(self.input_name, (used, self.window)) is False:
                    raise WorkerError(f"TensorRT refused input shape [{used}, {self.window}]")
                self.rows = used
            host_in = self.host[self.input_name]
            host_in[:rows] = batch
            host_in[rows:used] = 0.0
            self.cuda.memcpy_htod_async(self.device[self.input_name], host_in[:used], self.stream)
            if self.io.execute(self.stream) is False:
                raise WorkerError(last_error(self.logger, "TensorRT failed to run the batch"))
            out = self.host[name]
            self.cuda.memcpy_dtoh_async(out[:used], self.device[name], self.stream)
            self.stream.synchronize()
        return self.np.array(out[:rows], dtype=self.np.float32)

    def close(self):
        with self.gpu:
            for memory in self.device.values():
                memory.free()
            self.device = {}
            self.context = None
            self.engine = None
        self.gpu.release()


def build_plan(request, windows, numpy, log_line=log):
    """Build a plan from an ONNX model and write it to ``request["out"]``; return its device
    info. ``windows`` (float32 [N, W], or None) feed INT8 calibration."""
    trt, cuda = import_tensorrt()
    gpu = CudaContext(cuda, int(request.get("device", 0)))
    try:
        with gpu:
            plan = PlanBuilder(trt, cuda, numpy, request, windows, log_line).build()
            try:
                with open(request["out"], "wb") as stream:
                    stream.write(plan)
            except OSError as exc:
                raise WorkerError(f"cannot write {request['out']}: {first_line(exc)}") from None
        return gpu.info(trt)
    finally:
        gpu.release()


class PlanBuilder:
    """OnnxParser + builder config: a dynamic batch profile (1, opt, max), FP16 or INT8."""

    def __init__(self, trt, cuda, numpy, request, windows, log_line):
        self.trt, self.cuda, self.np = trt, cuda, numpy
        self.onnx = str(request["onnx"])
        self.precision = str(request["precision"])
        self.max_batch = int(request["max_batch"])
        self.opt_batch = min(int(request.get("opt_batch", 1)), self.max_batch)
        self.window = int(request["window_samples"])
        self.workspace = int(request.get("workspace_mb", 1024)) << 20
        self.cache = request.get("calibration_cache")
        self.windows = windows
        self.log = log_line
        self.logger = make_logger(trt)

    def network(self, builder):
        trt = self.trt
        flags = 0
        if trt_major(trt) < 10:  # explicit batch: required for ONNX before 10, the default since
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        with open(self.onnx, "rb") as stream:
            parsed = parser.parse(stream.read())
        if not parsed:
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            reason = first_line(Exception(errors[0])) if errors else "no error given"
            raise WorkerError(f"TensorRT cannot parse ONNX model {self.onnx}: {reason}")
        self.parser = parser  # the network refers to the parser's weights until the build
        if network.num_inputs != 1 or list(network.get_input(0).shape)[1:] != [self.window]:
            shapes = [list(network.get_input(i).shape) for i in range(network.num_inputs)]
            raise WorkerError(
                f"ONNX model {self.onnx} takes {shapes} but its sidecar says one [B, "
                f"{self.window}] input: the sidecar belongs to another model"
            )
        return network

    def profile(self, builder, name, smallest, usual, largest):
        profile = builder.create_optimization_profile()
        profile.set_shape(
            name, (smallest, self.window), (usual, self.window), (largest, self.window)
        )
        return profile

    def configure(self, builder, network):
        trt = self.trt
        config = builder.create_builder_config()
        if hasattr(config, "set_memory_pool_limit"):  # TensorRT >= 8.4
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace)
        else:  # TensorRT 8.2 (JetPack 4.6)
            config.max_workspace_size = self.workspace
        name = network.get_input(0).name
        config.add_optimization_profile(
            self.profile(builder, name, 1, self.opt_batch, self.max_batch)
        )
        if self.precision in ("fp16", "int8"):
            self.reduced_precision(builder, config, name)
        return config

    def require_flag(self, flag):
        if not hasattr(self.trt.BuilderFlag, flag):
            raise WorkerError(
                f"TensorRT {self.trt.__version__} has no {flag} builder flag (TensorRT 11 "
                f"builds strongly typed networks only): use precision fp32, or TensorRT 8-10"
            )

    def reduced_precision(self, builder, config, name):
        trt = self.trt
        self.require_flag("FP16")
        if not getattr(builder, "platform_has_fast_fp16", True):
            self.log("this GPU has no fast FP16: the fp16 plan may be no faster than fp32")
        config.set_flag(trt.BuilderFlag.FP16)
        if self.precision != "int8":
            return
        self.require_flag("INT8")
        if not getattr(builder, "platform_has_fast_int8", True):
            raise WorkerError(
                "this GPU has no fast INT8 (a Jetson TX2 or Nano has none): use --fp16"
            )
        config.set_flag(trt.BuilderFlag.INT8)
        batch = min(self.opt_batch, len(self.windows))
        config.int8_calibrator = self.calibrator(batch)
        if hasattr(config, "set_calibration_profile"):
            config.set_calibration_profile(self.profile(builder, name, batch, batch, batch))

    def calibrator(self, batch):
        trt, cuda, np = self.trt, self.cuda, self.np
        windows, cache = self.windows, self.cache

        class Calibrator(trt.IInt8EntropyCalibrator2):
            def __init__(self):
                trt.IInt8EntropyCalibrator2.__init__(self)
                self.position = 0
                self.memory = cuda.mem_alloc(batch * windows.shape[1] * 4)

            def get_batch_size(self):
                return batch

            def get_batch(self, names):
                if self.position + batch > len(windows):
                    return None
                chunk = windows[self.position : self.position + batch]
                cuda.memcpy_htod(self.memory, np.ascontiguousarray(chunk, dtype=np.float32))
                self.position += batch
                return [int(self.memory)]

            def read_calibration_cache(self):
                if cache and os.path.isfile(cache):
                    with open(cache, "rb") as stream:
                        return stream.read()
                return None

            def write_calibration_cache(self, table):
                if cache:
                    with open(cache, "wb") as stream:
                        stream.write(table)

        self.log(f"INT8 calibration on {len(windows)} windows, {batch} at a time")
        self.kept_calibrator = Calibrator()  # TensorRT holds no reference of its own
        return self.kept_calibrator

    def build(self):
        builder = self.trt.Builder(self.logger)
        network = self.network(builder)
        config = self.configure(builder, network)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            reason = last_error(self.logger, "no error given")
            raise WorkerError(f"TensorRT could not build a plan from {self.onnx}: {reason}")
        return plan


MODELS = {"tflite": TFLiteModel, "onnx": ONNXModel, "tensorrt": TensorRTModel}


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
        if op == "trt_info":
            return self.trt_info(header)
        if op == "trt_build":
            return self.trt_build(header)
        raise WorkerError(f"unknown request {op!r}")

    def described(self, reply):
        reply.update(
            ok=True,
            pid=os.getpid(),
            protocol=PROTOCOL,
            python=".".join(str(part) for part in sys.version_info[:3]),
            numpy=self.np.__version__,
        )
        return reply, b""

    def trt_info(self, header):
        self.numpy()
        trt, cuda = import_tensorrt()
        gpu = CudaContext(cuda, int(header.get("device", 0)))
        try:
            return self.described(gpu.info(trt))
        finally:
            gpu.release()

    def trt_build(self, header):
        np = self.numpy()
        path = header.get("calibration")
        windows = np.load(path, mmap_mode="r") if path else None
        return self.described(build_plan(header, windows, np))

    def load(self, header):
        np = self.numpy()
        engine = header.get("engine")
        if engine not in MODELS:
            raise WorkerError(
                "the engine worker runs {}, not {!r}".format(" or ".join(sorted(MODELS)), engine)
            )
        if self.model is not None and hasattr(self.model, "close"):
            self.model.close()
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
