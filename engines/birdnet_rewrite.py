"""Rewrite BirdNET V2.4's TFLite graph: fold each in-graph STFT + mel chain into one matmul.

BirdNET computes two mel spectrograms inside the model. Per branch the frames x [B, F, N] go
MUL(hann) → EXPAND_DIMS → RFFT2D → SQUEEZE → CAST(complex→float) → Tensordot(mel), the
Tensordot being SHAPE/GATHER/REDUCE_PROD/CONCATENATION/PACK/RESHAPE bookkeeping around a
FULLY_CONNECTED with the mel matrix [M, N/2+1] and a last RESHAPE to [B, F, M].

Why this is exact: CAST keeps the real part, and Re(DFT(x))[k] = Σₙ x[n]·cos(2πkn/N) is linear;
so are the window and the mel product (the model squares only afterwards). The chain is x·Wᵀ
with W = Mel [M, N/2+1] · C [N/2+1, N] · diag(hann), C[k, n] = cos(2πkn/N), built in float64.

Why the frames are centred first, x·Wᵀ = (x − x̄)·Wᵀ + x̄·(W·1): zero-padded audio becomes
constant frames after the model's min/max scaling. An FFT maps those to near-exact zeros
(butterflies subtract equal numbers), a plain float32 dot product over N terms does not, and
the model's power compression (mel^0.2) magnifies that rounding noise: up to 0.2 logits on
mostly padded windows. Centred, a constant frame is exactly zero at the matmul and its DC term
comes from W·1 computed in float64; the result is then closer to the float64 spectrogram than
the original FFT is. MEAN/SUB/MUL/ADD cost about 0.5 ms per window (3–6%).

Per branch, MEAN, SUB, FULLY_CONNECTED (keep_num_dims), MUL and ADD take the place of the
last RESHAPE; the ops nobody reads any more are dropped (MUL(hann), EXPAND_DIMS, RFFT2D,
SQUEEZE, CAST, SHAPE, 2× GATHER, 2× REDUCE_PROD, CONCATENATION, PACK, 2× RESHAPE, the mel
FULLY_CONNECTED), then the tensors, buffers (mel matrices, hann windows, fft lengths) and
operator codes nothing refers to. RFFT2D was about half of BirdNET's runtime.

The embedding (``model/GLOBAL_AVG_POOL/Mean``, the input of the FULLY_CONNECTED that writes
the logits) becomes output 1: XNNPACK frees intermediate tensors, so this is the cheap way to
get logits and embeddings from one invoke. The logits stay output 0.

The TFLite schema comes from ai-edge-litert and is imported only when a rewrite runs.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .errors import ModelArtifactError, RuntimeMissingError

FILE_IDENTIFIER = b"TFL3"


def _schema() -> Tuple[Any, Any]:
    try:
        import flatbuffers
        from ai_edge_litert import schema_py_generated as schema
    except ImportError as exc:
        raise RuntimeMissingError(
            f"rewriting a TFLite model needs ai-edge-litert and flatbuffers ({exc}): "
            "pip install ai-edge-litert"
        ) from exc
    return schema, flatbuffers


def folded_weight(mel: np.ndarray, window: np.ndarray) -> np.ndarray:
    """W [M, N] = mel [M, N/2+1] · Re(DFT) [N/2+1, N] · diag(window [N]), in float64."""
    n = window.shape[0]
    k = np.arange(mel.shape[1], dtype=np.float64)[:, None]
    real_dft = np.cos(2.0 * np.pi * ((k * np.arange(n)[None, :]) % n) / n)
    return (mel.astype(np.float64) @ real_dft) * window.astype(np.float64)[None, :]


class _Graph:
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

    def constant(self, tensor: int) -> Optional[np.ndarray]:
        """The value of a float32/int32 tensor backed by a buffer, else None."""
        t = self.sub.tensors[tensor]
        data = self.model.buffers[t.buffer].data
        dtype = {self.schema.TensorType.FLOAT32: np.float32, self.schema.TensorType.INT32: np.int32}
        if data is None or len(data) == 0 or t.type not in dtype:
            return None
        return np.frombuffer(np.asarray(data, np.uint8).tobytes(), dtype[t.type]).reshape(t.shape)

    def add_tensor(self, name: str, like: int, last: int) -> int:
        """A float32 activation shaped like tensor ``like`` but with last dimension ``last``."""
        t, old = self.schema.TensorT(), self.sub.tensors[like]
        signature = old.shapeSignature if old.shapeSignature is not None else old.shape
        t.name, t.type = name.encode(), self.schema.TensorType.FLOAT32
        t.shape, t.shapeSignature = [*list(old.shape)[:-1], last], [*list(signature)[:-1], last]
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
        """A builtin op (its operator code is added if missing); options type from its class."""
        if kind not in self.op_names:
            code = getattr(self.schema.BuiltinOperator, kind)
            codes = self.model.operatorCodes
            codes.append(self.schema.OperatorCodeT(deprecatedBuiltinCode=min(code, 127)))
            codes[-1].builtinCode = code
            self.op_names.append(kind)
        op = self.schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = self.op_names.index(kind), inputs, outputs
        op.builtinOptions = options
        op.builtinOptionsType = getattr(self.schema.BuiltinOptions, type(options).__name__[:-1])
        return op


def _expect(graph: _Graph, op: Optional[Any], kind: str, where: str) -> Any:
    if op is None or graph.kind(op) != kind:
        found = "nothing" if op is None else graph.kind(op)
        raise ModelArtifactError(f"not a BirdNET graph: expected {kind} {where}, found {found}")
    return op


def _only(graph: _Graph, tensor: int, kind: str) -> Any:
    """The single consumer of ``tensor``, which must be a ``kind`` op."""
    users = graph.consumers(tensor)
    name = graph.sub.tensors[tensor].name.decode("utf-8", "replace")
    return _expect(graph, users[0] if len(users) == 1 else None, kind, f"as the reader of {name}")


def _fold_branch(graph: _Graph, rfft: Any) -> None:
    """Replace the MUL(hann) … Tensordot(mel) chain around ``rfft`` by a centred matmul."""
    s, schema = graph.sub, graph.schema
    expand = _expect(graph, graph.producer(rfft.inputs[0]), "EXPAND_DIMS", "before RFFT2D")
    window_mul = _expect(graph, graph.producer(expand.inputs[0]), "MUL", "before EXPAND_DIMS")
    consts = [graph.constant(i) for i in window_mul.inputs]
    if sum(c is not None for c in consts) != 1:
        raise ModelArtifactError("not a BirdNET graph: window MUL needs one constant operand")
    window = next(c for c in consts if c is not None).reshape(-1)
    frames = next(i for i, c in zip(window_mul.inputs, consts) if c is None)
    n = window.shape[0]
    fft_length = graph.constant(rfft.inputs[1])
    if fft_length is None or list(fft_length.reshape(-1)) != [1, n]:
        raise ModelArtifactError(f"not a BirdNET graph: RFFT2D fft_length is not [1, {n}]")
    cast = _only(graph, _only(graph, rfft.outputs[0], "SQUEEZE").outputs[0], "CAST")
    if s.tensors[cast.outputs[0]].type != schema.TensorType.FLOAT32:
        raise ModelArtifactError("not a BirdNET graph: the CAST after RFFT2D is not to float32")
    reshapes = [op for op in graph.consumers(cast.outputs[0]) if graph.kind(op) == "RESHAPE"]
    flat = _expect(graph, reshapes[0] if len(reshapes) == 1 else None, "RESHAPE", "after CAST")
    mel_fc = _only(graph, flat.outputs[0], "FULLY_CONNECTED")
    mel = graph.constant(mel_fc.inputs[1])
    biased = len(mel_fc.inputs) > 2 and mel_fc.inputs[2] >= 0
    if mel is None or mel.ndim != 2 or mel.shape[1] != n // 2 + 1 or biased:
        raise ModelArtifactError(f"not a BirdNET graph: no bias-free [M, {n // 2 + 1}] mel matmul")
    last = _only(graph, mel_fc.outputs[0], "RESHAPE")

    out, bands, weight = last.outputs[0], mel.shape[0], folded_weight(mel, window)
    name = s.tensors[out].name.decode("utf-8", "replace") + "/folded"
    mean = graph.add_tensor(f"{name}/frame_mean", frames, 1)
    centred = graph.add_tensor(f"{name}/centred", frames, n)
    product = graph.add_tensor(f"{name}/matmul", frames, bands)
    dc = graph.add_tensor(f"{name}/dc", frames, bands)
    axis = graph.add_constant(f"{name}/axis", np.int32([len(s.tensors[frames].shape) - 1]))
    matrix = graph.add_constant(f"{name}/weight", weight)
    dc_gain = graph.add_constant(f"{name}/dc_gain", weight.sum(axis=1))  # W·1, in float64
    options = mel_fc.builtinOptions  # FullyConnectedOptions, fused activation NONE as before
    options.keepNumDims = True  # [B, F, N] → [B, F, M]: no flattening RESHAPEs needed
    at = s.operators.index(last)  # readers of ``out`` all come after this position
    s.operators[at : at + 1] = [
        graph.new_op("MEAN", [frames, axis], [mean], schema.ReducerOptionsT(keepDims=True)),
        graph.new_op("SUB", [frames, mean], [centred], schema.SubOptionsT()),
        graph.new_op("FULLY_CONNECTED", [centred, matrix, -1], [product], options),
        graph.new_op("MUL", [mean, dc_gain], [dc], schema.MulOptionsT()),
        graph.new_op("ADD", [product, dc], [out], schema.AddOptionsT()),
    ]


def _add_embedding_output(graph: _Graph) -> None:
    """Expose the input of the FULLY_CONNECTED that writes output 0 (the logits)."""
    head = _expect(graph, graph.producer(graph.sub.outputs[0]), "FULLY_CONNECTED", "at output 0")
    if head.inputs[0] not in list(graph.sub.outputs):
        graph.sub.outputs = [*list(graph.sub.outputs), head.inputs[0]]


def _drop_dead_ops(graph: _Graph) -> None:
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


def _compact(model: Any) -> None:
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


def _aligned_buffers(model: Any, schema: Any) -> None:
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


def _unpack(model_bytes: bytes, schema: Any) -> Any:
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


def rewrite_birdnet(model_bytes: bytes) -> bytes:
    """The BirdNET model with its RFFT + mel chains folded and the embedding as output 1."""
    schema, flatbuffers = _schema()
    model = _unpack(model_bytes, schema)
    graph = _Graph(model, schema)
    rffts = [op for op in graph.sub.operators if graph.kind(op) == "RFFT2D"]
    if not rffts:
        raise ModelArtifactError("not a BirdNET graph: it has no RFFT2D op to fold")
    for rfft in rffts:
        _fold_branch(graph, rfft)
    _add_embedding_output(graph)
    _drop_dead_ops(graph)
    if "RFFT2D" in {graph.kind(op) for op in graph.sub.operators}:
        raise ModelArtifactError("not a BirdNET graph: an RFFT2D output is still read elsewhere")
    _compact(model)
    _aligned_buffers(model, schema)
    builder = flatbuffers.Builder(len(model_bytes) + (8 << 20))
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def output_names(model_bytes: bytes) -> List[str]:
    """Names of the subgraph-0 outputs in order (the rewritten model: logits, embeddings)."""
    schema, _ = _schema()
    sub = _unpack(model_bytes, schema).subgraphs[0]
    return [sub.tensors[i].name.decode("utf-8") for i in sub.outputs]
