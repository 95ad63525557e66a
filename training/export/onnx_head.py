"""Head weights → ONNX: the head alone (embeddings and BirdNET's logits in), and BirdNET + head
as one graph (raw audio in). Built with onnx.helper (MatMul, Add, Relu, Gather, Mul): exactly
the arithmetic ``engines/head.py`` does in numpy, and portable to any ONNX consumer."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

from birdd.engines.head import HeadWeights, Layers

HEAD_INPUT = "embeddings"
PRIOR_INPUT = "base_logits"
HEAD_OUTPUT = "logits"
PREFIX = "head/"


def _dense(layers: Layers) -> Tuple[list, list, str]:
    nodes, initialisers = [], []
    current = HEAD_INPUT
    for index, (weight, bias) in enumerate(layers):
        w, b = f"{PREFIX}W{index}", f"{PREFIX}b{index}"
        initialisers += [numpy_helper.from_array(weight, w), numpy_helper.from_array(bias, b)]
        product, summed = f"{PREFIX}matmul{index}", f"{PREFIX}add{index}"
        nodes.append(helper.make_node("MatMul", [current, w], [product]))
        nodes.append(helper.make_node("Add", [product, b], [summed]))
        current = summed
        if index < len(layers) - 1:
            current = f"{PREFIX}relu{index}"
            nodes.append(helper.make_node("Relu", [summed], [current]))
    return nodes, initialisers, current


def _prior(weights: HeadWeights, dense_out: str) -> Tuple[list, list]:
    """``dense_out + prior_scale * base_logits[:, prior_column]``."""
    columns = np.maximum(weights.prior_column, 0).astype(np.int64)
    initialisers = [
        numpy_helper.from_array(columns, f"{PREFIX}prior_column"),
        numpy_helper.from_array(weights.prior_scale.astype(np.float32), f"{PREFIX}prior_scale"),
    ]
    nodes = [
        helper.make_node(
            "Gather", [PRIOR_INPUT, f"{PREFIX}prior_column"], [f"{PREFIX}prior"], axis=1
        ),
        helper.make_node("Mul", [f"{PREFIX}prior", f"{PREFIX}prior_scale"], [f"{PREFIX}scaled"]),
        helper.make_node("Add", [dense_out, f"{PREFIX}scaled"], [HEAD_OUTPUT]),
    ]
    return nodes, initialisers


def head_graph(weights: HeadWeights, base_classes: int) -> onnx.GraphProto:
    nodes, initialisers, dense_out = _dense(weights.layers)
    dim, classes = weights.layers[0][0].shape[0], weights.layers[-1][0].shape[1]
    inputs = [helper.make_tensor_value_info(HEAD_INPUT, TensorProto.FLOAT, ["batch", dim])]
    if weights.uses_prior:
        more_nodes, more_initialisers = _prior(weights, dense_out)
        nodes += more_nodes
        initialisers += more_initialisers
        inputs.append(
            helper.make_tensor_value_info(PRIOR_INPUT, TensorProto.FLOAT, ["batch", base_classes])
        )
    else:
        nodes.append(helper.make_node("Identity", [dense_out], [HEAD_OUTPUT]))
    return helper.make_graph(
        nodes,
        "birdd_head",
        inputs,
        [helper.make_tensor_value_info(HEAD_OUTPUT, TensorProto.FLOAT, ["batch", classes])],
        initialisers,
    )


def head_model(
    weights: HeadWeights, base_classes: int, opsets: Sequence[Tuple[str, int]] = (("", 17),)
) -> onnx.ModelProto:
    model = helper.make_model(
        head_graph(weights, base_classes),
        producer_name="birdd.training",
        opset_imports=[helper.make_opsetid(domain, version) for domain, version in opsets],
    )
    model.ir_version = 8  # readable by ONNX Runtime >= 1.14, as BirdNET's conversion is
    onnx.checker.check_model(model)
    return model


def write_head(weights: HeadWeights, base_classes: int, path: Path) -> Path:
    """The head alone: embeddings (and, with a prior, the base model's logits) in."""
    onnx.save(head_model(weights, base_classes), str(path))
    return path


def write_merged(
    base_path: Path, outputs: Dict[str, str], weights: HeadWeights, base_classes: int, path: Path
) -> Path:
    """BirdNET's graph with the head on its embeddings (and logits): raw audio in; the head's
    logits and the embeddings out. ``outputs``: the base's output names by role."""
    base = onnx.load(str(base_path))
    opsets = [(entry.domain, entry.version) for entry in base.opset_import]
    head = head_model(weights, base_classes, opsets)
    head.ir_version = base.ir_version
    io_map = [(outputs["embeddings"], HEAD_INPUT)]
    if weights.uses_prior:
        io_map.append((outputs["scores"], PRIOR_INPUT))
    merged = compose.merge_models(
        base,
        head,
        io_map=io_map,
        outputs=[HEAD_OUTPUT, outputs["embeddings"]],
        producer_name="birdd.training",
    )
    onnx.checker.check_model(merged)
    onnx.save(merged, str(path))
    return path
