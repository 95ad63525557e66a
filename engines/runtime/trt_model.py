"""TensorRT (tensorrt + pycuda): the CUDA context, the logger, and a deserialized plan.

TensorRT 8.0-8.4 (JetPack 4.6 on a TX2: 8.2) addresses tensors by binding index, 8.5 and later
by name; ``Bindings`` and ``NamedTensors`` give both one interface. tensorrt and pycuda are
imported only when a TensorRT model is loaded.
"""

import logging
import os
import sys

import numpy as np

from .base import Model
from .errors import ModelError, first_line

log = logging.getLogger(__name__)

TRT_MISSING = (
    "TensorRT is not installed for {python} ({error}): pip install 'birdd[tensorrt]' (on a "
    "Jetson: the JetPack's python3-libnvinfer and pycuda; or engine.python: /usr/bin/python3)"
)


def import_tensorrt():
    """(tensorrt, pycuda.driver), or a runtime_missing ModelError naming what to install."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise runtime_missing(exc) from None
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise runtime_missing(exc) from None
    return trt, cuda


def runtime_missing(exc):
    message = TRT_MISSING.format(python=sys.executable, error=first_line(exc))
    return ModelError(message, "runtime_missing")


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
            raise ModelError(f"CUDA is not usable here: {first_line(exc)}") from None
        if index >= count:
            raise ModelError(
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

    class Collecting(base):  # type: ignore[misc,valid-type]  # a class from the bindings
        def __init__(self):
            base.__init__(self)  # type: ignore[misc]
            self.errors = []

        def log(self, severity, msg):
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg).strip())
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                log.warning("TensorRT: %s", str(msg).strip())

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

    def __init__(self, request):
        Model.__init__(self, request)
        trt, cuda = import_tensorrt()
        self.trt, self.cuda = trt, cuda
        self.runtime = f"tensorrt {trt.__version__}"
        self.gpu = CudaContext(cuda, int(self.config.get("device", 0)))
        with self.gpu:
            self.load_plan()
            self.allocate()
        self.runtime += " on " + self.gpu.info(trt)["device"]
        log.info("%s runs %s", self.runtime, os.path.basename(self.path))

    def load_plan(self):
        trt = self.trt
        self.logger = make_logger(trt)
        self.trt_runtime = trt.Runtime(self.logger)
        try:
            with open(self.path, "rb") as stream:
                data = stream.read()
        except OSError as exc:
            raise ModelError(f"cannot read TensorRT plan {self.path}: {first_line(exc)}") from None
        engine = self.trt_runtime.deserialize_cuda_engine(data)
        if engine is None:
            reason = last_error(self.logger, "TensorRT could not deserialize it")
            raise ModelError(
                f"cannot load TensorRT plan {self.path}: {reason}: the file is corrupt or was "
                "built for another GPU or TensorRT version; rebuild it with 'birdd engines build'"
            )
        self.plan = engine  # not self.engine: Model.engine is the engine type, "tensorrt"
        self.context = engine.create_execution_context()
        if self.context is None:
            reason = last_error(self.logger, "no error given")
            raise ModelError(f"TensorRT cannot run plan {self.path} (out of GPU memory?): {reason}")
        tensors = NamedTensors if hasattr(engine, "num_io_tensors") else Bindings
        self.io = tensors(trt, engine, self.context)

    def check_input(self):
        inputs = [name for name in self.io.names if self.io.is_input(name)]
        shape = self.io.shape(inputs[0]) if len(inputs) == 1 else []
        if len(shape) != 2 or shape[1] not in (-1, self.window):
            found = [(name, self.io.shape(name)) for name in inputs]
            raise ModelError(
                f"TensorRT plan {self.path} takes {found} but its sidecar says one [B, "
                f"{self.window}] input: the sidecar belongs to another model"
            )
        self.check_dtype(np.dtype(self.io.dtype(inputs[0])).name)
        self.fixed_batch = shape[0] if shape[0] > 0 else None
        if self.fixed_batch is not None and self.batch > self.fixed_batch:
            raise ModelError(
                f"TensorRT plan {self.path} has a fixed batch of {self.fixed_batch}: set "
                f"engine.batch_size to {self.fixed_batch} or less"
            )
        return inputs[0]

    def allocate(self):
        cuda = self.cuda
        self.input_name = self.check_input()
        rows = self.fixed_batch or self.batch
        if self.io.set_input_shape(self.input_name, (rows, self.window)) is False:
            raise ModelError(
                f"TensorRT plan {self.path} does not take a batch of {rows}: rebuild it with "
                f"'birdd engines build' and --batch {rows} or more"
            )
        self.rows = rows
        self.stream = cuda.Stream()
        self.host, self.device = {}, {}
        for name in self.io.names:
            shape = [rows, self.window] if name == self.input_name else self.io.output_shape(name)
            if any(size < 0 for size in shape):
                raise ModelError(f"TensorRT plan {self.path}: output {name} has shape {shape}")
            self.host[name] = cuda.pagelocked_empty(tuple(shape), self.io.dtype(name))
            self.device[name] = cuda.mem_alloc(max(self.host[name].nbytes, 1))
            self.io.bind(name, self.device[name])
        outputs = [name for name in self.io.names if name != self.input_name]
        for role, wanted in self.outputs.items():
            if wanted not in outputs:
                raise ModelError(
                    f"TensorRT plan {self.path} has no output named {wanted!r} ({role}); its "
                    f"outputs are {outputs}"
                )
        self.names = {
            "scores": self.outputs.get("scores", outputs[0] if outputs else None),
            "embeddings": self.outputs.get("embeddings"),
        }

    def run(self, batch, roles):
        names = self.outputs_of(self.names, roles)
        rows = batch.shape[0]
        used = self.fixed_batch or rows
        with self.gpu:
            if used != self.rows:
                if self.io.set_input_shape(self.input_name, (used, self.window)) is False:
                    raise ModelError(f"TensorRT refused input shape [{used}, {self.window}]")
                self.rows = used
            host_in = self.host[self.input_name]
            host_in[:rows] = batch
            host_in[rows:used] = 0.0
            self.cuda.memcpy_htod_async(self.device[self.input_name], host_in[:used], self.stream)
            if self.io.execute(self.stream) is False:
                raise ModelError(last_error(self.logger, "TensorRT failed to run the batch"))
            for name in names:
                out = self.host[name]
                self.cuda.memcpy_dtoh_async(out[:used], self.device[name], self.stream)
            self.stream.synchronize()
        return [np.array(self.host[name][:rows], dtype=np.float32) for name in names]

    def close(self):
        with self.gpu:
            for memory in self.device.values():
                memory.free()
            self.device = {}
            self.context = None
            self.plan = None
        self.gpu.release()
