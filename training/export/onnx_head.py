"""Dense layers → ONNX: the head alone (embeddings in), and BirdNET + head as one graph (raw
audio in). Built from the exported layers with onnx.helper (MatMul, Add, Relu): exactly the
arithmetic ``engines/head.py`` does in numpy, and portable to any ONNX consumer."""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

from birdd.engines.head import Layers

HEAD_INPUT = "embeddings"
HEAD_OUTPUT = "logits"
PREFIX = "head/"


def head_graph(layers: Layers) -> onnx.GraphProto:
    nodes, initialisers = [], []
    current = HEAD_INPUT
    for index, (weight, bias) in enumerate(layers):
        w, b = f"{PREFIX}W{index}", f"{PREFIX}b{index}"
        initialisers += [numpy_helper.from_array(weight, w), numpy_helper.from_array(bias, b)]
        product, summed = f"{PREFIX}matmul{index}", f"{PREFIX}add{index}"
        last = index == len(layers) - 1
        nodes.append(helper.make_node("MatMul", [current, w], [product]))
        nodes.append(helper.make_node("Add", [product, b], [HEAD_OUTPUT if last else summed]))
        current = summed
        if not last:
            current = f"{PREFIX}relu{index}"
            nodes.append(helper.make_node("Relu", [summed], [current]))
    dim, classes = layers[0][0].shape[0], layers[-1][0].shape[1]
    return helper.make_graph(
        nodes,
        "birdd_head",
        [helper.make_tensor_value_info(HEAD_INPUT, TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info(HEAD_OUTPUT, TensorProto.FLOAT, ["batch", classes])],
        initialisers,
    )


def head_model(layers: Layers, opsets: Sequence[Tuple[str, int]] = (("", 17),)) -> onnx.ModelProto:
    model = helper.make_model(
        head_graph(layers),
        producer_name="birdd.training",
        opset_imports=[helper.make_opsetid(domain, version) for domain, version in opsets],
    )
    model.ir_version = 8  # readable by ONNX Runtime >= 1.14, as BirdNET's conversion is
    onnx.checker.check_model(model)
    return model


def write_head(layers: Layers, path: Path) -> Path:
    onnx.save(head_model(layers), str(path))
    return path


def write_merged(base_path: Path, embeddings_output: str, layers: Layers, path: Path) -> Path:
    """BirdNET's graph with the head on its embeddings: raw audio in; the head's logits (and
    the embeddings) out."""
    base = onnx.load(str(base_path))
    opsets = [(entry.domain, entry.version) for entry in base.opset_import]
    head = head_model(layers, opsets)
    head.ir_version = base.ir_version
    merged = compose.merge_models(
        base,
        head,
        io_map=[(embeddings_output, HEAD_INPUT)],
        outputs=[HEAD_OUTPUT, embeddings_output],
        producer_name="birdd.training",
    )
    onnx.checker.check_model(merged)
    onnx.save(merged, str(path))
    return path


def onnx_outputs(path: Path) -> List[str]:
    return [output.name for output in onnx.load(str(path), load_external_data=False).graph.output]


def as_float32(layers: Layers) -> Layers:
    return [(np.asarray(w, np.float32), np.asarray(b, np.float32)) for w, b in layers]
