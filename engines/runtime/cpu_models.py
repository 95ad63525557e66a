"""The CPU runtimes: TFLite (LiteRT, or tflite-runtime as the fallback) and ONNX Runtime.

TFLite: resizing an interpreter's input costs 0.3–2.4 s on its first call, and every
interpreter holds its own packed weights and activations (BirdNET: about 170 MB at batch 1,
330 MB at batch 8), so the model keeps one interpreter, sized once at load to the batch size,
and zero-pads a partial batch.

ONNX Runtime: the config lists execution providers in order of preference and the model keeps
those this installation offers (CPU when none), so one config serves a desktop and a Jetson;
a provider listed but unable to start here (onnxruntime-gpu without a GPU) falls back to CPU in
one log line (``onnx_session.py``). A model exported with a dynamic batch runs each batch as
it comes; a fixed batch is zero-padded.
"""

import logging
import sys

import numpy as np

from .base import Model
from .errors import ModelError, first_line
from .native_log import without_delegate_banner
from .onnx_session import CPU_PROVIDER, open_session

log = logging.getLogger(__name__)

TFLITE_EXTRAS = {"litert": "birdd (ai-edge-litert)", "tflite-runtime": "birdd[tflite-runtime]"}
ONNX_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16"}


def _version(package_name, module):
    package = sys.modules.get(package_name)
    version = getattr(package, "__version__", "") or getattr(module, "__version__", "")
    return f"{package_name} {version}".strip()


def import_interpreter(runtime="auto"):
    """(Interpreter class, "package version") of the first TFLite runtime that ``runtime``
    (auto | litert | tflite-runtime) allows and this interpreter has; auto tries LiteRT first."""
    if runtime in ("auto", "litert"):
        try:
            from ai_edge_litert import interpreter as litert
        except ImportError:
            pass
        else:
            return litert.Interpreter, _version("ai_edge_litert", litert)
    if runtime in ("auto", "tflite-runtime"):
        try:
            from tflite_runtime import interpreter as tflite_runtime
        except ImportError:
            pass
        else:
            return tflite_runtime.Interpreter, _version("tflite_runtime", tflite_runtime)
    chosen = [name for name in TFLITE_EXTRAS if runtime in ("auto", name)]
    wanted = " or ".join(f"pip install '{TFLITE_EXTRAS[name]}'" for name in chosen)
    raise ModelError(
        f"no TFLite runtime is installed for {sys.executable}: {wanted}", "runtime_missing"
    )


class TFLiteModel(Model):
    def __init__(self, request):
        Model.__init__(self, request)
        interpreter_class, self.runtime = import_interpreter(self.config.get("runtime", "auto"))
        threads = int(self.config.get("threads", 2))
        try:
            with without_delegate_banner():
                interpreter = interpreter_class(model_path=self.path, num_threads=threads)
                self.input_index = self.sized_input(interpreter)
                interpreter.allocate_tensors()
        except ModelError:
            raise
        except Exception as exc:  # the runtimes raise ValueError/RuntimeError for corrupt files
            raise ModelError(f"cannot load TFLite model {self.path}: {first_line(exc)}") from None
        self.interpreter = interpreter
        details = interpreter.get_output_details()
        self.indices = {role: self.output_index(details, role) for role in ("scores", "embeddings")}

    def sized_input(self, interpreter):
        """Check the model's input against the sidecar, resize it to the batch; its index."""
        detail = interpreter.get_input_details()[0]
        if list(detail["shape"][1:]) != [self.window]:
            raise ModelError(
                f"model {self.path} takes input {detail['shape'].tolist()} but its sidecar "
                f"says [B, {self.window}]: the sidecar belongs to another model"
            )
        self.check_dtype(np.dtype(detail["dtype"]).name)
        interpreter.resize_tensor_input(detail["index"], [self.batch, self.window])
        return detail["index"]

    def output_index(self, details, role):
        wanted = self.outputs.get(role)
        if wanted is None:
            return details[0]["index"] if role == "scores" else None
        found = [detail["index"] for detail in details if detail["name"] == wanted]
        if not found:
            raise ModelError(f"model {self.path} has no output named {wanted!r} ({role})")
        return found[0]

    def run(self, batch, roles):
        indices = self.outputs_of(self.indices, roles)
        self.interpreter.set_tensor(self.input_index, self.padded(batch, self.batch))
        self.interpreter.invoke()
        rows = batch.shape[0]
        return [self.interpreter.get_tensor(index)[:rows] for index in indices]


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise ModelError(
            f"ONNX Runtime is not installed for {sys.executable} ({first_line(exc)}): pip "
            "install 'birdd[onnx]' (or onnxruntime-gpu for CUDA/TensorRT; for an engine.python "
            "interpreter, onnxruntime alone)",
            "runtime_missing",
        ) from None
    return onnxruntime


def choose_providers(wanted, available):
    """The wanted providers this installation has, in order; CPU when none of them is here."""
    chosen = [name for name in wanted if name in available]
    for name in wanted:
        if name not in available:
            log.warning(
                "ONNX Runtime provider %s is not available here (available: %s); skipping it",
                name,
                ", ".join(available),
            )
    if not chosen:
        log.warning("none of the configured ONNX Runtime providers is available: using CPU")
        chosen = [CPU_PROVIDER]
    return chosen


class ONNXModel(Model):
    def __init__(self, request):
        Model.__init__(self, request)
        ort = import_onnxruntime()
        wanted = list(self.config.get("providers") or [CPU_PROVIDER])
        providers = choose_providers(wanted, ort.get_available_providers())
        try:
            session = open_session(ort, self.path, self.options(ort), providers)
        except Exception as exc:  # ONNX Runtime raises its own types for corrupt files
            raise ModelError(f"cannot load ONNX model {self.path}: {first_line(exc)}") from None
        self.input_name, self.fixed_batch = self.check_input(session.get_inputs())
        self.names = self.output_names([output.name for output in session.get_outputs()])
        self.session = session
        used = session.get_providers()
        log.info("ONNX Runtime %s runs %s on %s", ort.__version__, self.path, used)
        self.runtime = f"onnxruntime {ort.__version__} on {', '.join(used)}"

    def options(self, ort):
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(self.config.get("threads", 2))
        inter_op = int(self.config.get("inter_op_threads", 1))
        options.inter_op_num_threads = inter_op
        if inter_op > 1:
            options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return options

    def check_input(self, inputs):
        """(input name, fixed batch or None) of the one [B, window] input the sidecar says."""
        shape = inputs[0].shape if len(inputs) == 1 else []
        fixed_window = len(shape) == 2 and isinstance(shape[1], int)
        if len(shape) != 2 or (fixed_window and shape[1] != self.window):
            found = [(i.name, i.shape, i.type) for i in inputs]
            raise ModelError(
                f"model {self.path} takes {found} but its sidecar says one float "
                f"[B, {self.window}] input: the sidecar belongs to another model"
            )
        self.check_dtype(ONNX_TYPES.get(inputs[0].type, inputs[0].type))
        fixed_batch = shape[0] if isinstance(shape[0], int) else None
        if fixed_batch is not None and self.batch > fixed_batch:
            raise ModelError(
                f"model {self.path} has a fixed batch of {fixed_batch}: set engine.batch_size "
                f"to {fixed_batch} or less, or export the model with a dynamic batch"
            )
        return inputs[0].name, fixed_batch

    def output_names(self, names):
        for role, wanted in self.outputs.items():
            if wanted not in names:
                raise ModelError(
                    f"model {self.path} has no output named {wanted!r} ({role}); its outputs "
                    f"are {names}"
                )
        scores = self.outputs.get("scores", names[0])
        return {"scores": scores, "embeddings": self.outputs.get("embeddings")}

    def run(self, batch, roles):
        names = self.outputs_of(self.names, roles)
        rows = batch.shape[0]
        if self.fixed_batch is not None:
            batch = self.padded(batch, self.fixed_batch)
        try:
            results = self.session.run(names, {self.input_name: batch})
        except Exception as exc:
            raise ModelError(f"ONNX Runtime failed on {self.path}: {first_line(exc)}") from None
        return [result[:rows] for result in results]
