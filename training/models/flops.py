"""Multiply-adds per window of an ONNX graph (Conv, MatMul, Gemm), counted from its shapes at
batch 1: the same count for a student and for BirdNET's ONNX conversion."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Union

import numpy as np
import onnx
from onnx import shape_inference


def _shapes(model: onnx.ModelProto) -> Dict[str, List[int]]:
    shapes = {}
    for info in [*model.graph.value_info, *model.graph.output, *model.graph.input]:
        shapes[info.name] = [d.dim_value for d in info.type.tensor_type.shape.dim]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _gemm_inner(node: onnx.NodeProto, a: List[int], b: List[int]) -> int:
    if node.op_type == "MatMul":
        return a[-1]
    trans_b = any(attr.name == "transB" and attr.i for attr in node.attribute)
    return b[1] if trans_b else b[0]


def onnx_macs(source: Union[str, Path, onnx.ModelProto]) -> int:
    """Multiply-adds of one window; raises ValueError where a shape cannot be inferred."""
    model = onnx.load(str(source)) if not isinstance(source, onnx.ModelProto) else source
    model = onnx.ModelProto.FromString(model.SerializeToString())  # edited below: a copy
    for graph_input in model.graph.input:
        dims = graph_input.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].dim_value = 1
    shapes = _shapes(shape_inference.infer_shapes(model, data_prop=True))
    total = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        out, weight = shapes.get(node.output[0]), shapes.get(node.input[1])
        if not out or not weight or 0 in out:
            raise ValueError(f"{node.op_type} {node.name!r}: shapes not inferred")
        if node.op_type == "Conv":
            total += int(np.prod(out)) * int(np.prod(weight[1:]))
        else:
            total += int(np.prod(out)) * _gemm_inner(node, shapes[node.input[0]], weight)
    return total
