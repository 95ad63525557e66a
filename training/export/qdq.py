"""The activation ranges of a student's int8 QDQ file, by the names of
``training/models/qat.py`` (its fake-quantised points), and back as onnxruntime overrides.

The tensors are named by the torch exporter from the module tree; the conv outputs are taken
in graph order (the stem's, then each block's depthwise and pointwise), so a pruned student of
any width maps the same way."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from birdd.engines.models.labels import Species
from birdd.training.export.student import (
    AUDIO_TENSOR,
    DFT_TENSOR,
    engine_scores,
    export_student,
    quantise_int8,
)
from birdd.training.models.qat import Affine
from birdd.training.models.student import Student

SUFFIX = "_QuantizeLinear_Output"  # onnxruntime's name for a quantised tensor

# fake-quantised point → the tensor the export quantises there (conv outputs: see conv_outputs)
FIXED = {
    "audio": AUDIO_TENSOR,
    "dft": DFT_TENSOR,
    "logmel": "/Unsqueeze_output_0",
    "norm": "/norm/BatchNormalization_output_0",
    "mean": "/ReduceMean_1_output_0",
    "max": "/ReduceMax_output_0",
    "concat": "/Concat_output_0",
}


def conv_outputs(graph) -> List[str]:
    """The network's conv outputs after their ReLU, in order (the int8 file has no ReLU: the
    quantiser folds it into the conv's output range and names that output as the ReLU's)."""
    relu = {node.input[0]: node.output[0] for node in graph.node if node.op_type == "Relu"}
    return [
        relu.get(node.output[0], node.output[0])
        for node in graph.node
        if node.op_type == "Conv" and not node.name.startswith("/frontend/")
    ]


def tensor_names(graph) -> Dict[str, str]:
    names = dict(FIXED)
    names.update({f"conv{i}": tensor for i, tensor in enumerate(conv_outputs(graph))})
    return names


def _affine(scale: np.ndarray, zero_point: np.ndarray) -> Affine:
    return float(scale), int(zero_point), 8 * zero_point.dtype.itemsize


def read_ranges(path: Path) -> Dict[str, Affine]:
    """Each fake-quantised point's (scale, zero point, bits) in the int8 file at ``path``."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    quantised = {  # named by its output: a graph output's input is renamed
        node.output[0].removesuffix(SUFFIX): _affine(values[node.input[1]], values[node.input[2]])
        for node in graph.node
        if node.op_type == "QuantizeLinear"
    }
    ranges: Dict[str, Affine] = {}
    for point, tensor in tensor_names(graph).items():
        if tensor not in quantised:
            raise ValueError(f"{path}: no int8 range for {tensor} ({point}): not a student file?")
        ranges[point] = quantised[tensor]
    return ranges


def overrides(fp32: Path, ranges: Dict[str, Affine]) -> Dict[str, List[Dict[str, object]]]:
    """``ranges`` as onnxruntime's ``TensorQuantOverrides`` for the FP32 file at ``fp32``:
    quantising with them writes exactly these scales and zero points."""
    import onnx
    from onnxruntime.quantization import QuantType

    names = tensor_names(onnx.load(str(fp32), load_external_data=False).graph)
    types = {8: (QuantType.QInt8, np.int8), 16: (QuantType.QInt16, np.int16)}
    result = {}
    for point, (scale, zero, bits) in ranges.items():
        quant_type, dtype = types[bits]
        result[names[point]] = [
            {"quant_type": quant_type, "scale": np.array(scale, np.float32),
             "zero_point": np.array(zero, dtype)}
        ]  # fmt: skip
    return result


def static_int8(
    model: Student, species: List[Species], samples: int, calibration: np.ndarray,
    windows: np.ndarray,
) -> Tuple[Dict[str, Affine], np.ndarray]:  # fmt: skip
    """The export's static int8 (``quantise_int8``, calibrated on ``calibration``) of ``model``
    as it stands, in a temporary folder: its activation ranges, and ``windows`` scored by it
    through the birdd ONNX engine."""
    with tempfile.TemporaryDirectory() as folder:
        fp32 = export_student(model, Path(folder) / "student.onnx", species, "s", samples, {})
        int8 = quantise_int8(
            fp32, Path(folder) / "student_int8.onnx", model, species, "s", calibration, {}
        )
        return read_ranges(int8), engine_scores(int8, windows)
