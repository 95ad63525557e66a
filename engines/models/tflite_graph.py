"""Generic editing of a TFLite flatbuffer through the schema's object API: unpack, walk and
extend subgraph 0, drop what nothing reads, pack with aligned buffers. The BirdNET rewrite
(``birdnet_rewrite``) is built on it; the schema comes from ai-edge-litert, imported only when
a model is edited."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from birdd.engines.errors import ModelArtifactError, RuntimeMissingError

FILE_IDENTIFIER = b"TFL3"


def tflite_schema() -> Tuple[Any, Any]:
    try:
        import flatbuffers
        from ai_edge_litert import schema_py_generated as schema
    except ImportError as exc:
        raise RuntimeMissingError(
            f"rewriting a TFLite model needs ai-edge-litert and flatbuffers ({exc}): "
            "pip install ai-edge-litert"
        ) from exc
    return schema, flatbuffers


class Graph:
    """Subgraph 0 of a ModelT: op kinds, producers/consumers, constants, new tensors and ops."""

    def __init__(self, model: Any, schema: Any) -> None:
        self.model, self.schema, self.sub = model, schema, model.subgraphs[0]
        builtin = schema.BuiltinOperator
        names = {getattr(builtin, k): k for k in dir(builtin) if not k.startswith("_")}
        self.op_names = [
            names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
            for code in model.operatorCodes
        ]

    def kind(self, op: Any) -> str:
        return self.op_names[op.opcodeIndex]

    def producer(self, tensor: int) -> Optional[Any]:
        return next((op for op in self.sub.operators if tensor in list(op.outputs)), None)

    def consumers(self, tensor: int) -> List[Any]:
        return [op for op in self.sub.operators if tensor in list(op.inputs)]

    def name(self, tensor: int) -> str:
        return self.sub.tensors[tensor].name.decode("utf-8", "replace")

    def signature(self, tensor: int) -> List[int]:
        """The tensor's shape with -1 where it is dynamic."""
        t = self.sub.tensors[tensor]
        return [int(d) for d in (t.shapeSignature if t.shapeSignature is not None else t.shape)]

    def constant(self, tensor: int) -> Optional[np.ndarray]:
        """The value of a float32/int32 tensor backed by a buffer, else None."""
        t = self.sub.tensors[tensor]
        data = self.model.buffers[t.buffer].data
        dtype = {self.schema.TensorType.FLOAT32: np.float32, self.schema.TensorType.INT32: np.int32}
        if data is None or len(data) == 0 or t.type not in dtype:
            return None
        return np.frombuffer(np.asarray(data, np.uint8).tobytes(), dtype[t.type]).reshape(t.shape)

    def add_activation(self, name: str, signature: Sequence[int]) -> int:
        """A float32 activation; -1 (the batch) in ``signature`` is 1 in its static shape."""
        t = self.schema.TensorT()
        t.name, t.type = name.encode(), self.schema.TensorType.FLOAT32
        t.shape, t.shapeSignature = [abs(d) for d in signature], list(signature)
        self.sub.tensors.append(t)
        return len(self.sub.tensors) - 1

    def add_constant(self, name: str, value: np.ndarray) -> int:
        """A constant tensor with its own buffer; float64 values are stored as float32."""
        t = self.schema.TensorT()
        is_int = value.dtype == np.int32
        value = value if is_int else value.astype(np.float32)
        t.name, t.shape = name.encode(), list(value.shape)
        t.type = self.schema.TensorType.INT32 if is_int else self.schema.TensorType.FLOAT32
        data = np.frombuffer(value.tobytes(), np.uint8)
        self.model.buffers.append(self.schema.BufferT(data=data))
        t.buffer = len(self.model.buffers) - 1
        self.sub.tensors.append(t)
        return len(self.sub.tensors) - 1

    def new_op(self, kind: str, inputs: List[int], outputs: List[int], options: Any) -> Any:
        """A builtin op (its operator code is added if missing); options type from its class,
        none for ``options`` None."""
        if kind not in self.op_names:
            code = getattr(self.schema.BuiltinOperator, kind)
            codes = self.model.operatorCodes
            codes.append(self.schema.OperatorCodeT(deprecatedBuiltinCode=min(code, 127)))
            codes[-1].builtinCode = code
            self.op_names.append(kind)
        op = self.schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = self.op_names.index(kind), inputs, outputs
        op.builtinOptions = options
        if options is not None:
            table = type(options).__name__[:-1]  # ExpOptionsT → ExpOptions
            op.builtinOptionsType = getattr(self.schema.BuiltinOptions, table)
        return op


def drop_dead_ops(graph: Graph) -> None:
    """Remove, until none is left, ops none of whose outputs is read or a graph output."""
    while True:
        read = {i for op in graph.sub.operators for i in op.inputs} | set(graph.sub.outputs)
        live = [op for op in graph.sub.operators if set(op.outputs) & read]
        if len(live) == len(graph.sub.operators):
            return
        graph.sub.operators = live


def _ints(vector: Any) -> List[int]:
    """An optional int vector of the object API (None, list or numpy array) as a list."""
    return [] if vector is None else [int(i) for i in vector]


def _renumber(kept: List[int]) -> Dict[int, int]:
    return {-1: -1, **{old: new for new, old in enumerate(kept)}}


def compact(model: Any) -> None:
    """Drop tensors, buffers and operator codes nothing refers to; renumber the references."""
    renumbered: List[Dict[int, int]] = []
    for sub in model.subgraphs:
        used = {i for op in sub.operators for i in [*op.inputs, *op.outputs]}
        used |= {i for op in sub.operators for i in _ints(op.intermediates)}
        new = _renumber(sorted((used | set(sub.inputs) | set(sub.outputs)) - {-1}))
        sub.tensors = [sub.tensors[i] for i in sorted(new) if i >= 0]
        for op in sub.operators:
            op.inputs, op.outputs = [new[i] for i in op.inputs], [new[i] for i in op.outputs]
            op.intermediates = [new[i] for i in _ints(op.intermediates)] or None
        sub.inputs, sub.outputs = [new[i] for i in sub.inputs], [new[i] for i in sub.outputs]
        renumbered.append(new)
    for signature in model.signatureDefs or []:
        for entry in [*(signature.inputs or []), *(signature.outputs or [])]:
            entry.tensorIndex = renumbered[signature.subgraphIndex][entry.tensorIndex]
    tensors, meta = [t for s in model.subgraphs for t in s.tensors], model.metadata or []
    kept = sorted({0} | {t.buffer for t in tensors} | {m.buffer for m in meta})
    new_buffer = _renumber(kept)
    model.buffers = [model.buffers[i] for i in kept]
    for item in [*tensors, *meta]:
        item.buffer = new_buffer[item.buffer]
    ops = [op for s in model.subgraphs for op in s.operators]
    codes = sorted({op.opcodeIndex for op in ops})
    new_code = _renumber(codes)
    model.operatorCodes = [model.operatorCodes[i] for i in codes]
    for op in ops:
        op.opcodeIndex = new_code[op.opcodeIndex]


def aligned_buffers(model: Any, schema: Any) -> None:
    """Pack constant data 16-byte aligned (the generated Pack aligns uint8 vectors to 1)."""

    class AlignedBufferT(schema.BufferT):
        def Pack(self, builder: Any) -> int:  # the generated class's method name
            raw = None if self.data is None else np.asarray(self.data, np.uint8).tobytes()
            if raw is not None:  # kept even when empty: a shape-[0] constant is not "no data"
                builder.StartVector(1, len(raw), 16)
                builder.head -= len(raw)
                builder.Bytes[builder.head : builder.head + len(raw)] = raw
                data = builder.EndVector()
            schema.BufferStart(builder)
            if raw is not None:
                schema.BufferAddData(builder, data)
            return schema.BufferEnd(builder)

    model.buffers = [AlignedBufferT(data=b.data) for b in model.buffers]


def unpack(model_bytes: bytes, schema: Any) -> Any:
    if len(model_bytes) < 8 or bytes(model_bytes[4:8]) != FILE_IDENTIFIER:
        raise ModelArtifactError("not a TFLite model: the file identifier is not TFL3")
    try:
        model = schema.ModelT.InitFromPackedBuf(model_bytes, 0)
    except Exception as exc:  # a corrupt flatbuffer fails with struct/index/type errors
        raise ModelArtifactError(f"not a readable TFLite model ({type(exc).__name__})") from exc
    if not model.subgraphs or not model.buffers:
        raise ModelArtifactError("not a readable TFLite model: no subgraph or no buffers")
    if any(b.offset > 1 for b in model.buffers):
        raise ModelArtifactError("TFLite models with external buffers (> 2 GB) are not supported")
    return model


def output_names(model_bytes: bytes) -> List[str]:
    """Names of the subgraph-0 outputs in order (the rewritten model: logits, embeddings)."""
    schema, _ = tflite_schema()
    sub = unpack(model_bytes, schema).subgraphs[0]
    return [sub.tensors[i].name.decode("utf-8") for i in sub.outputs]
