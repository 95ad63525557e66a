"""A trained student → ``student.onnx`` (FP32) and ``student_int8.onnx`` (static int8), each with
its sidecar: raw 48 kHz audio in, logits out, the front end's parameters in ``frontend``.

int8 is onnxruntime's static quantisation (QDQ, per-channel weights) calibrated on training
chunks, ranges at the 99.999th percentile (with min/max ranges on 64 windows, one calibration
draw lost 0.05 test AP and others < 0.01: one loud chunk sets a whole tensor's scale). The
front end's DFT convolution has int8 weights (its fixed matrix is most of the tiny student's
bytes) but 16-bit input and output; its power, mel and log stay in float (``power_and_log``),
and so do the logits. Quantisation-aware training (``training/models/qat.py``) fine-tunes
through this arithmetic; its ranges come back here as ``overrides``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from birdd.engines.models.artifact import write_sidecar
from birdd.engines.models.labels import Species
from birdd.training.models.student import Student
from birdd.training.verify import Parity, open_engine

INPUT = "audio"
OUTPUT = "logits"


def constants_as_initializers(data: bytes) -> bytes:
    """The exporter writes the front end's fixed matrices as Constant nodes; as initializers
    the int8 quantiser treats them as the convolution weights they are."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(data)
    graph = model.graph
    for node in [n for n in graph.node if n.op_type == "Constant"]:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if value is None or len(value.t.dims) < 2:
            continue
        array = numpy_helper.to_array(value.t)
        graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
        graph.node.remove(node)
    return model.SerializeToString()


def onnx_bytes(model: Student, samples: int) -> bytes:
    model.eval()
    buffer = io.BytesIO()
    torch.onnx.export(
        model, (torch.zeros(1, samples),), buffer, input_names=[INPUT], output_names=[OUTPUT],
        dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=17,
        dynamo=False,
    )  # fmt: skip
    return constants_as_initializers(buffer.getvalue())


def sidecar_meta(model: Student, name: str, samples: int, extra: Dict[str, Any]) -> Dict:
    params = model.frontend.params
    return {
        "name": name,
        "version": str(extra.get("training", {}).get("data_sha256", "1"))[:12],
        "kind": "classifier",
        "format": "onnx",
        "activation": "sigmoid",
        "sample_rate": params.sample_rate,
        "window_samples": samples,
        "window_s": samples / params.sample_rate,
        "input_name": INPUT,
        "input_shape": [-1, samples],
        "input_dtype": "float32",
        "outputs": {"scores": OUTPUT},
        "frontend": params.to_json(),
        "licence": "trained by birdd train; the training data's licences: see the report",
        **extra,
    }


def export_student(
    model: Student, path: Path, species: List[Species], name: str, samples: int, extra: Dict
) -> Path:
    path.write_bytes(onnx_bytes(model, samples))
    write_sidecar(path, sidecar_meta(model, name, samples, extra), species)
    return path


class _Calibration:
    """onnxruntime's CalibrationDataReader: one window per call."""

    def __init__(self, windows: np.ndarray) -> None:
        self._rows = iter(windows)

    def get_next(self):
        row = next(self._rows, None)
        return None if row is None else {INPUT: row[None].astype(np.float32)}


def power_and_log(path: Path) -> List[str]:
    """The front end's nodes from the squaring on (power, mel, log): kept in float. Power spans
    many decades, and int8 steps on its linear scale wipe out the quiet bands (measured on the
    small student: test macro AP 0.317 FP32, 0.147 with them quantised, 0.280 without)."""
    import onnx

    names: List[str] = []
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.name.startswith("/frontend/") and (names or node.op_type == "Mul"):
            names.append(node.name)
    return names


# The audio input and the DFT convolution's output, quantised to 16 bits (symmetric): at int8
# a quiet call is a few steps of the loudest calibration chunk's range and is lost before any
# trained layer (tiny pruned student, seed 0: test macro AP 0.192 FP32, 0.084 with both int8,
# 0.179 with both float, in the fake-quantised model of training/models/qat.py).
AUDIO_TENSOR = "/frontend/Unsqueeze_output_0"
DFT_TENSOR = "/frontend/Conv_output_0"


def _options(overrides: Optional[Dict[str, List[Dict]]]) -> Dict[str, object]:
    """quantize_static's extra options: 16-bit audio and DFT output, float logits (int8 steps
    on the output tie the ranking the scores are for), then ``overrides``."""
    from onnxruntime.quantization import QuantType

    wide = [{"quant_type": QuantType.QInt16, "symmetric": True}]
    tensors: Dict[str, List[Dict]] = {AUDIO_TENSOR: wide, DFT_TENSOR: wide}
    tensors.update(overrides or {})
    return {"TensorQuantOverrides": tensors, "OpTypesToExcludeOutputQuantization": ["Gemm"]}


def quantise_int8(
    fp32: Path, path: Path, model: Student, species: List[Species], name: str,
    calibration: np.ndarray, extra: Dict, overrides: Optional[Dict[str, List[Dict]]] = None,
) -> Path:  # fmt: skip
    """int8 weights and activations except the audio and DFT output (16 bits) and the logits
    (float). ``overrides``: onnxruntime's ``TensorQuantOverrides`` (fixed scales and zero
    points, e.g. the ranges quantisation-aware training used: ``training/export/qdq.py``)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        quantize_static,
    )

    reader = type("Reader", (_Calibration, CalibrationDataReader), {})(calibration)
    quantize_static(
        str(fp32), str(path), reader, quant_format=QuantFormat.QDQ, per_channel=True,
        calibrate_method=CalibrationMethod.Percentile, nodes_to_exclude=power_and_log(fp32),
        extra_options=_options(overrides),
    )  # fmt: skip
    write_sidecar(path, sidecar_meta(model, name, calibration.shape[1], extra), species)
    return path


def engine_scores(path: Path, windows: np.ndarray) -> np.ndarray:
    """``windows`` scored by the birdd ONNX engine, as ``birdd --simulate --model`` loads it."""
    engine = open_engine("onnx", str(path))
    try:
        batch = engine.input_spec.max_batch
        return np.concatenate(
            [engine.predict(windows[i : i + batch]) for i in range(0, len(windows), batch)]
        )
    finally:
        engine.close()


def parity(path: Path, windows: np.ndarray, expected: np.ndarray) -> Parity:
    scores = engine_scores(path, windows)
    return Parity(path.name, "onnx", len(windows), float(np.abs(scores - expected).max()))
