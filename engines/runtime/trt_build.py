"""Build a TensorRT plan from an ONNX model: OnnxParser, a dynamic batch profile, FP16/INT8."""

import logging
import os

import numpy as np

from .errors import ModelError, first_line
from .trt_model import CudaContext, import_tensorrt, last_error, make_logger, trt_major

log = logging.getLogger(__name__)


def build_plan(request, windows):
    """Build a plan from an ONNX model and write it to ``request["out"]``; return its device
    info. ``windows`` (float32 [N, W], or None) feed INT8 calibration."""
    trt, cuda = import_tensorrt()
    gpu = CudaContext(cuda, int(request.get("device", 0)))
    try:
        with gpu:
            plan = PlanBuilder(trt, cuda, request, windows).build()
            try:
                with open(request["out"], "wb") as stream:
                    stream.write(plan)
            except OSError as exc:
                raise ModelError(f"cannot write {request['out']}: {first_line(exc)}") from None
        return gpu.info(trt)
    finally:
        gpu.release()


class PlanBuilder:
    """OnnxParser + builder config: a dynamic batch profile (1, opt, max), FP16 or INT8."""

    def __init__(self, trt, cuda, request, windows):
        self.trt, self.cuda = trt, cuda
        self.onnx = str(request["onnx"])
        self.precision = str(request["precision"])
        self.max_batch = int(request["max_batch"])
        self.opt_batch = min(int(request.get("opt_batch", 1)), self.max_batch)
        self.window = int(request["window_samples"])
        self.workspace = int(request.get("workspace_mb", 1024)) << 20
        self.cache = request.get("calibration_cache")
        self.windows = windows
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
            raise ModelError(f"TensorRT cannot parse ONNX model {self.onnx}: {reason}")
        self.parser = parser  # the network refers to the parser's weights until the build
        if network.num_inputs != 1 or list(network.get_input(0).shape)[1:] != [self.window]:
            shapes = [list(network.get_input(i).shape) for i in range(network.num_inputs)]
            raise ModelError(
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
            raise ModelError(
                f"TensorRT {self.trt.__version__} has no {flag} builder flag (TensorRT 11 "
                f"builds strongly typed networks only): use precision fp32, or TensorRT 8-10"
            )

    def reduced_precision(self, builder, config, name):
        trt = self.trt
        self.require_flag("FP16")
        if not getattr(builder, "platform_has_fast_fp16", True):
            log.info("this GPU has no fast FP16: the fp16 plan may be no faster than fp32")
        config.set_flag(trt.BuilderFlag.FP16)
        if self.precision != "int8":
            return
        self.require_flag("INT8")
        if not getattr(builder, "platform_has_fast_int8", True):
            raise ModelError(
                "this GPU has no fast INT8 (a Jetson TX2 or Nano has none): use --fp16"
            )
        config.set_flag(trt.BuilderFlag.INT8)
        batch = min(self.opt_batch, len(self.windows))
        config.int8_calibrator = self.calibrator(batch)
        if hasattr(config, "set_calibration_profile"):
            config.set_calibration_profile(self.profile(builder, name, batch, batch, batch))

    def calibrator(self, batch):
        trt, cuda = self.trt, self.cuda
        windows, cache = self.windows, self.cache

        class Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[name-defined]
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

        log.info("INT8 calibration on %d windows, %d at a time", len(windows), batch)
        self.kept_calibrator = Calibrator()  # TensorRT holds no reference of its own
        return self.kept_calibrator

    def build(self):
        builder = self.trt.Builder(self.logger)
        network = self.network(builder)
        config = self.configure(builder, network)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            reason = last_error(self.logger, "no error given")
            raise ModelError(f"TensorRT could not build a plan from {self.onnx}: {reason}")
        return plan
