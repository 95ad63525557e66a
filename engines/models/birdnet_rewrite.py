"""Rewrite BirdNET V2.4's TFLite graph: each mel branch becomes one strided convolution of INPUT.

BirdNET computes two mel spectrograms inside the model. Per branch the input x [B, L] (L = 144000)
is scaled to s = ((x − min x)/(max(x − min x) + ε) − 0.5)·2, framed by tf.signal.frame's lowering
(SHAPE/SPLIT_V/…/STRIDED_SLICE, a RESHAPE into sub-frames of gcd(N, step) samples, a GATHER of
[F, N/gcd] sub-frame indices, a RESHAPE to frames [B, F, N]; N = 2048, step 278 and N = 1024,
step 280, F = 511 both), then goes MUL(hann) → EXPAND_DIMS → RFFT2D → SQUEEZE → CAST(complex→
float) → Tensordot(mel), the Tensordot being SHAPE/GATHER/REDUCE_PROD/CONCATENATION/PACK/RESHAPE
bookkeeping around a FULLY_CONNECTED with the mel matrix [M, N/2+1] (M = 96) and a last RESHAPE
to the bands y [B, F, M]. Only then does the model compress them: MUL(y, y) → POW(p), p = 0.2295
and 0.1905.

Why this is exact: CAST keeps the real part, and Re(DFT(x))[k] = Σₙ x[n]·cos(2πkn/N) is linear;
so are the window and the mel product: y_f = W·s_f for frame f, with W = Mel [M, N/2+1] ·
C [N/2+1, N] · diag(hann), C[k, n] = cos(2πkn/N), built in float64. The scaling is affine with
one α, β per window, s = α·x + β: α = 2/(R + ε), β = −α·min x − 1, R = max x − min x (equal to
max(x − min x) in float32 too: rounding is monotonic). Hence

    y_f = α·(W·x_f) + β·(W·1),

and W·x_f, over all frames, is a strided convolution of the raw input with the M rows of W. It
runs as one CONV_2D: x read as [B, 1, L/g, g], blocks of g samples (g a divisor of the step: 139
and 40), the filter W zero-padded to K = ⌈N/g⌉ blocks, [M, 1, K, g], stride step/g, VALID →
[B, 1, F, M]. XNNPACK and ONNX Runtime run that as one GEMM-like kernel on both threads, and the
F×N frame tensor (4 MB per window at N = 2048) is never gathered. The input is cut to the blocks
the last frame needs (N = 2048: 1035 blocks of 139 = 143865 samples), or zero-padded to them; for
N = 1024 all 3600 blocks of 40 are used. The zero taps add 1.8% and 1.6% multiply-adds; blocks of
gcd(N, step) = 2 and 8 samples ran the convolutions 12% slower, hence ``MIN_BLOCK``.

Why the raw input and not s: zero-padded audio (a partial last window) is constant in s. An FFT
maps a constant frame to near-exact zeros (butterflies subtract equal numbers), a float32 dot
product over N terms does not, and the compression magnifies that rounding noise: up to 0.2
logits on mostly padded windows. In x such frames are exact zeros, so W·x_f = 0 exactly and the
frame is β·(W·1), W·1 summed in float64. The spectrograms come out closer to a float64
computation than the original FFT's (max |Δ| 2e-4 against its 1.3e-3 on real and padded windows,
tests/test_birdnet_rewrite.py). α and β take REDUCE_MIN, REDUCE_MAX, SUB, ADD(ε), DIV, MUL and
SUB on [B, 1] and two RESHAPEs to [B, 1, 1]; the scaling's five full-length ops are gone.

Per branch, [SLICE or PAD,] RESHAPE, CONV_2D, RESHAPE to [B, F, M], MUL(α), MUL(β, W·1) and ADD
take the place of the Tensordot's last RESHAPE (the α, β ops, shared by the branches that frame
the same scaled signal, go first), and POW(y·y, p) becomes EXP(LOG(y·y)·p): the same values to
float rounding (a square below 1.2e-38 gives 0 instead of < 6e-8), but XNNPACK runs LOG and EXP
vectorised on every thread where TFLite's POW kernel calls pow() per element on one (0.4 ms per
window at 2 threads). Then the ops nobody reads any more are dropped (the scaling, the framing,
MUL(hann), EXPAND_DIMS, RFFT2D, SQUEEZE, CAST, the Tensordot), and the tensors, buffers (mel
matrices, hann windows, fft lengths, frame offsets) and operator codes nothing refers to. Every
op of the pattern is checked; a graph that differs is refused with ModelArtifactError ("not a
BirdNET graph: …"). RFFT2D was about half of BirdNET's runtime; the mel part, from INPUT to the
concatenated spectrograms, went from 5.6 ms per window (frame GATHER, centred matmul, POW) to 1.9
ms at 2 threads, batch 8 (ai-edge-litert 2.3, 2-core EPYC), the whole model from 10.9 to 7.0 ms.

The embedding (``model/GLOBAL_AVG_POOL/Mean``, the input of the FULLY_CONNECTED that writes
the logits) becomes output 1: XNNPACK frees intermediate tensors, so this is the cheap way to
get logits and embeddings from one invoke. The logits stay output 0.

The TFLite schema comes from ai-edge-litert and is imported only when a rewrite runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from birdd.engines.errors import ModelArtifactError
from birdd.engines.models.tflite_graph import (
    FILE_IDENTIFIER,
    Graph,
    aligned_buffers,
    compact,
    drop_dead_ops,
    tflite_schema,
    unpack,
)

MIN_BLOCK = 32  # the fewest samples per block (input channels of the convolution)


def folded_weight(mel: np.ndarray, window: np.ndarray) -> np.ndarray:
    """W [M, N] = mel [M, N/2+1] · Re(DFT) [N/2+1, N] · diag(window [N]), in float64."""
    n = window.shape[0]
    k = np.arange(mel.shape[1], dtype=np.float64)[:, None]
    real_dft = np.cos(2.0 * np.pi * ((k * np.arange(n)[None, :]) % n) / n)
    return (mel.astype(np.float64) @ real_dft) * window.astype(np.float64)[None, :]


def block_size(length: int, step: int) -> int:
    """The block g, a divisor of ``step`` (at least ``MIN_BLOCK`` where one is), whose kernel of
    ⌈length/g⌉ blocks has the fewest zero taps; the larger g on a tie."""
    divisors = [g for g in range(1, step + 1) if step % g == 0]
    wide = [g for g in divisors if g >= MIN_BLOCK] or divisors
    return min(wide, key=lambda g: (-(-length // g) * g, -g))


def strided_filter(weight: np.ndarray, block: int) -> np.ndarray:
    """W [M, N] as a CONV_2D filter [M, 1, K, block], K = ⌈N/block⌉, zero-padded at the end."""
    bands, n = weight.shape
    taps = -(-n // block)
    padded = np.zeros((bands, taps * block), weight.dtype)
    padded[:, :n] = weight
    return padded.reshape(bands, 1, taps, block)


def conv_blocks(samples: int, block: int, taps: int, stride: int, frames: int) -> int:
    """Input blocks of the convolution: all of ``samples`` when they give exactly ``frames``
    outputs, else the fewest that do (the input is then cut or zero-padded to them)."""
    if samples % block == 0 and (samples // block - taps) // stride + 1 == frames:
        return samples // block
    return (frames - 1) * stride + taps


def _refuse(what: str) -> ModelArtifactError:
    return ModelArtifactError(f"not a BirdNET graph: {what}")


def _expect(graph: Graph, op: Optional[Any], kind: str, where: str) -> Any:
    if op is None or graph.kind(op) != kind:
        found = "nothing" if op is None else graph.kind(op)
        raise _refuse(f"expected {kind} {where}, found {found}")
    return op


def _made_by(graph: Graph, tensor: int, kind: str) -> Any:
    """The op that writes ``tensor``, which must be a ``kind`` op."""
    return _expect(graph, graph.producer(tensor), kind, f"writing {graph.name(tensor)}")


def _only(graph: Graph, tensor: int, kind: str) -> Any:
    """The single consumer of ``tensor``, which must be a ``kind`` op."""
    users = graph.consumers(tensor)
    where = f"as the reader of {graph.name(tensor)}"
    return _expect(graph, users[0] if len(users) == 1 else None, kind, where)


def _split(graph: Graph, op: Any) -> Tuple[int, np.ndarray]:
    """The variable and the constant operand of a binary op with exactly one constant, the
    second one where the order matters."""
    values = [graph.constant(i) for i in op.inputs]
    where = f"{graph.kind(op)} writing {graph.name(op.outputs[0])}"
    if len(op.inputs) != 2 or sum(v is not None for v in values) != 1:
        raise _refuse(f"{where} needs one constant")
    if graph.kind(op) in ("SUB", "DIV", "FLOOR_DIV") and values[0] is not None:
        raise _refuse(f"{where} needs its constant second")
    variable = next(i for i, v in zip(op.inputs, values) if v is None)
    return variable, next(v for v in values if v is not None)


def _scalar(graph: Graph, op: Any, expected: Optional[float] = None) -> Tuple[int, float]:
    """``_split`` for a one-element constant, optionally required to equal ``expected``."""
    variable, value = _split(graph, op)
    name = graph.name(op.outputs[0])
    if value.size != 1 or (expected is not None and float(value.reshape(-1)[0]) != expected):
        raise _refuse(f"{graph.kind(op)} writing {name} has constant {value.reshape(-1)[:4]}")
    return variable, float(value.reshape(-1)[0])


@dataclass(frozen=True)
class _Scaling:
    """s = ((x − min x)/(max(x − min x) + eps) − offset)·gain of the graph input x [B, L]."""

    signal: int
    eps: float
    offset: float
    gain: float


def _scaling(graph: Graph, scaled: int) -> _Scaling:
    """Read the min/max scaling that writes ``scaled`` back to the graph input."""
    centred, gain = _scalar(graph, _made_by(graph, scaled, "MUL"))
    quotient, offset = _scalar(graph, _made_by(graph, centred, "SUB"))
    divide = _made_by(graph, quotient, "DIV")
    shifted, denominator = divide.inputs
    top, eps = _scalar(graph, _made_by(graph, denominator, "ADD"))
    reduce_max = _made_by(graph, top, "REDUCE_MAX")
    subtract = _made_by(graph, shifted, "SUB")
    signal, low = subtract.inputs
    reduce_min = _made_by(graph, low, "REDUCE_MIN")
    same = reduce_max.inputs[0] == shifted and reduce_min.inputs[0] == signal
    axes = [graph.constant(op.inputs[1]) for op in (reduce_min, reduce_max)]
    if not same or any(a is None or a.reshape(-1).tolist() != [1] for a in axes):
        raise _refuse("the input scaling is not (x − min x)/max(x − min x) over axis 1")
    if list(graph.sub.inputs) != [signal] or len(graph.signature(signal)) != 2:
        raise _refuse("the input scaling does not read the one [B, samples] graph input")
    return _Scaling(signal, eps, offset, gain)


@dataclass(frozen=True)
class _Framing:
    """tf.signal.frame of ``scaled`` [B, L]: F = (L − length)//step + 1 frames [B, F, length]."""

    scaled: int
    length: int
    step: int


def _frame_count_step(graph: Graph, count: int, length: int) -> int:
    """The step of count = max((L − length)//step + 1, 0), as tf.signal.frame computes it."""
    bounded, _ = _scalar(graph, _made_by(graph, count, "MAXIMUM"), 0.0)
    quotient, _ = _scalar(graph, _made_by(graph, bounded, "ADD"), 1.0)
    difference, step = _scalar(graph, _made_by(graph, quotient, "FLOOR_DIV"))
    _scalar(graph, _made_by(graph, difference, "SUB"), float(length))
    return int(step)


def _framing(graph: Graph, frames: int) -> _Framing:
    """Read tf.signal.frame's lowering that writes ``frames`` [B, F, N] back to its signal."""
    gather = _made_by(graph, _made_by(graph, frames, "RESHAPE").inputs[0], "GATHER")
    options = gather.builtinOptions
    if options is None or options.axis != 1 or options.batchDims != 0:
        raise _refuse("the frame GATHER is not along axis 1")
    params, indices = gather.inputs
    starts, offsets = _split(graph, _made_by(graph, indices, "ADD"))
    sub_frames, sub_length = offsets.size, graph.signature(params)[-1]
    if offsets.reshape(-1).tolist() != list(range(sub_frames)) or sub_length < 1:
        raise _refuse("the frame GATHER does not take consecutive sub-frames")
    spaced, sub_step = _scalar(
        graph, _made_by(graph, _made_by(graph, starts, "RESHAPE").inputs[0], "MUL")
    )
    frame_range = _made_by(graph, spaced, "RANGE")
    ends = [graph.constant(frame_range.inputs[i]) for i in (0, 2)]  # start, delta
    if [None if e is None else e.reshape(-1).tolist() for e in ends] != [[0], [1]]:
        raise _refuse("the frame RANGE does not count 0, 1, 2, …")
    length, step = sub_frames * sub_length, int(sub_step) * sub_length
    if _frame_count_step(graph, frame_range.inputs[1], length) != step:
        raise _refuse("the frame count and the frame starts disagree on the frame step")
    cut = _made_by(graph, _made_by(graph, params, "RESHAPE").inputs[0], "STRIDED_SLICE")
    begins = graph.constant(cut.inputs[1])
    if begins is None or begins.any():
        raise _refuse("the framed signal does not start at sample 0")
    return _Framing(cut.inputs[0], length, step)


@dataclass(frozen=True)
class _Affine:
    """Tensors α, β [B, 1, 1] with s = α·x + β, and the ops that compute them from x."""

    alpha: int
    beta: int
    ops: List[Any]


def _affine(graph: Graph, scaling: _Scaling, name: str) -> _Affine:
    """α = gain/(max x − min x + eps), β = −α·min x − offset·gain, per window, on [B, 1]."""
    schema, x = graph.schema, scaling.signal
    parts = ("min", "max", "range", "denominator", "alpha_2d", "alpha_min", "beta_2d")
    low, high, spread, denominator, alpha, shift, beta = (
        graph.add_activation(f"{name}/{part}", [-1, 1]) for part in parts
    )
    alpha3, beta3 = (
        graph.add_activation(f"{name}/{part}", [-1, 1, 1]) for part in ("alpha", "beta")
    )
    axis = graph.add_constant(f"{name}/axis", np.array([1], np.int32))
    eps = graph.add_constant(f"{name}/eps", np.array(scaling.eps))
    gain = graph.add_constant(f"{name}/gain", np.array(scaling.gain))
    base = graph.add_constant(f"{name}/base", np.array(-scaling.offset * scaling.gain))
    shape3 = graph.add_constant(f"{name}/shape", np.array([-1, 1, 1], np.int32))
    keep = schema.ReducerOptionsT(keepDims=True)
    ops = [
        graph.new_op("REDUCE_MIN", [x, axis], [low], keep),
        graph.new_op("REDUCE_MAX", [x, axis], [high], keep),
        graph.new_op("SUB", [high, low], [spread], schema.SubOptionsT()),
        graph.new_op("ADD", [spread, eps], [denominator], schema.AddOptionsT()),
        graph.new_op("DIV", [gain, denominator], [alpha], schema.DivOptionsT()),
        graph.new_op("MUL", [alpha, low], [shift], schema.MulOptionsT()),
        graph.new_op("SUB", [base, shift], [beta], schema.SubOptionsT()),
        graph.new_op("RESHAPE", [alpha, shape3], [alpha3], _reshape_options(schema, [-1, 1, 1])),
        graph.new_op("RESHAPE", [beta, shape3], [beta3], _reshape_options(schema, [-1, 1, 1])),
    ]
    return _Affine(alpha3, beta3, ops)


def _reshape_options(schema: Any, shape: List[int]) -> Any:
    options = schema.ReshapeOptionsT()
    options.newShape = list(shape)
    return options


def _strided_conv(
    graph: Graph, x: int, weight: np.ndarray, step: int, frames: int, name: str
) -> Tuple[int, List[Any]]:
    """conv [B, F, M] with conv[b, f] = W·x[b, f·step : f·step + N], and the ops writing it."""
    schema = graph.schema
    samples = graph.signature(x)[1]
    bands, length = weight.shape
    block = block_size(length, step)
    kernel = strided_filter(weight, block)
    taps, stride = kernel.shape[2], step // block
    blocks = conv_blocks(samples, block, taps, stride, frames)
    ops, signal = [], x
    if blocks * block != samples:
        signal = graph.add_activation(f"{name}/signal", [-1, blocks * block])
        if blocks * block < samples:
            begin = graph.add_constant(f"{name}/begin", np.array([0, 0], np.int32))
            size = graph.add_constant(f"{name}/size", np.array([-1, blocks * block], np.int32))
            ops.append(graph.new_op("SLICE", [x, begin, size], [signal], schema.SliceOptionsT()))
        else:
            pads = np.array([[0, 0], [0, blocks * block - samples]], np.int32)
            padding = graph.add_constant(f"{name}/padding", pads)
            ops.append(graph.new_op("PAD", [x, padding], [signal], schema.PadOptionsT()))
    image_shape, out_shape = [-1, 1, blocks, block], [-1, frames, bands]
    image = graph.add_activation(f"{name}/blocks", image_shape)
    conv4 = graph.add_activation(f"{name}/conv", [-1, 1, frames, bands])
    conv3 = graph.add_activation(f"{name}/frames", out_shape)
    options = schema.Conv2DOptionsT()
    options.padding, options.strideH, options.strideW = schema.Padding.VALID, 1, stride
    options.dilationHFactor = options.dilationWFactor = 1
    options.fusedActivationFunction = schema.ActivationFunctionType.NONE
    filters = graph.add_constant(f"{name}/filter", kernel)
    bias = graph.add_constant(f"{name}/bias", np.zeros(bands, np.float32))
    image_dims = graph.add_constant(f"{name}/blocks_shape", np.array(image_shape, np.int32))
    out_dims = graph.add_constant(f"{name}/frames_shape", np.array(out_shape, np.int32))
    ops += [
        graph.new_op(
            "RESHAPE", [signal, image_dims], [image], _reshape_options(schema, image_shape)
        ),
        graph.new_op("CONV_2D", [image, filters, bias], [conv4], options),
        graph.new_op("RESHAPE", [conv4, out_dims], [conv3], _reshape_options(schema, out_shape)),
    ]
    return conv3, ops


@dataclass(frozen=True)
class _MelChain:
    """MUL(hann) → … → Tensordot(mel) of one branch, from its frames to its last RESHAPE."""

    frames: int
    window: np.ndarray
    mel: np.ndarray
    last: Any


def _mel_chain(graph: Graph, rfft: Any) -> _MelChain:
    """Read the chain around ``rfft``: MUL(hann), EXPAND_DIMS, RFFT2D, SQUEEZE, CAST, Tensordot."""
    s, schema = graph.sub, graph.schema
    expand = _expect(graph, graph.producer(rfft.inputs[0]), "EXPAND_DIMS", "before RFFT2D")
    window_mul = _expect(graph, graph.producer(expand.inputs[0]), "MUL", "before EXPAND_DIMS")
    frames, window = _split(graph, window_mul)
    n = window.size
    fft_length = graph.constant(rfft.inputs[1])
    if fft_length is None or list(fft_length.reshape(-1)) != [1, n]:
        raise _refuse(f"RFFT2D fft_length is not [1, {n}]")
    cast = _only(graph, _only(graph, rfft.outputs[0], "SQUEEZE").outputs[0], "CAST")
    if s.tensors[cast.outputs[0]].type != schema.TensorType.FLOAT32:
        raise _refuse("the CAST after RFFT2D is not to float32")
    reshapes = [op for op in graph.consumers(cast.outputs[0]) if graph.kind(op) == "RESHAPE"]
    flat = _expect(graph, reshapes[0] if len(reshapes) == 1 else None, "RESHAPE", "after CAST")
    mel_fc = _only(graph, flat.outputs[0], "FULLY_CONNECTED")
    mel = graph.constant(mel_fc.inputs[1])
    biased = len(mel_fc.inputs) > 2 and mel_fc.inputs[2] >= 0
    if mel is None or mel.ndim != 2 or mel.shape[1] != n // 2 + 1 or biased:
        raise _refuse(f"no bias-free [M, {n // 2 + 1}] mel matmul")
    last = _only(graph, mel_fc.outputs[0], "RESHAPE")
    return _MelChain(frames, window.reshape(-1), mel, last)


def _fold_branch(graph: Graph, rfft: Any, affines: Dict[int, _Affine]) -> None:
    """Replace the scaling, the framing and the chain around ``rfft`` by one strided convolution
    of the raw input, scaled by α and shifted by β·(W·1) afterwards."""
    s, schema = graph.sub, graph.schema
    chain = _mel_chain(graph, rfft)
    n, bands = chain.window.size, chain.mel.shape[0]
    framing = _framing(graph, chain.frames)
    if framing.length != n:
        raise _refuse(f"frames of {framing.length} samples meet a window of {n}")
    scaling = _scaling(graph, framing.scaled)
    samples = graph.signature(scaling.signal)[1]
    count = (samples - n) // framing.step + 1
    if samples < n:
        raise _refuse(f"frames of {n} samples do not fit a {samples}-sample input")

    out, weight = chain.last.outputs[0], folded_weight(chain.mel, chain.window)
    name = graph.name(out) + "/folded"
    if framing.scaled not in affines:  # its ops read only the graph input: they go first
        affines[framing.scaled] = _affine(graph, scaling, f"{name}/affine")
        s.operators[0:0] = affines[framing.scaled].ops
    affine = affines[framing.scaled]
    conv, conv_ops = _strided_conv(graph, scaling.signal, weight, framing.step, count, name)
    scaled = graph.add_activation(f"{name}/scaled", [-1, count, bands])
    dc = graph.add_activation(f"{name}/dc", [-1, 1, bands])
    dc_gain = graph.add_constant(f"{name}/dc_gain", weight.sum(axis=1))  # W·1, in float64
    at = s.operators.index(chain.last)  # readers of ``out`` all come after this position
    s.operators[at : at + 1] = [
        *conv_ops,
        graph.new_op("MUL", [conv, affine.alpha], [scaled], schema.MulOptionsT()),
        graph.new_op("MUL", [affine.beta, dc_gain], [dc], schema.MulOptionsT()),
        graph.new_op("ADD", [scaled, dc], [out], schema.AddOptionsT()),
    ]
    _power_as_exp_log(graph, out)


def _power_as_exp_log(graph: Graph, bands: int) -> None:
    """Replace POW(y·y, p) after the mel bands y by EXP(LOG(y·y)·p): XNNPACK runs LOG and EXP
    vectorised on every thread, TFLite's own POW kernel calls pow() per element on one."""
    schema = graph.schema
    square = _only(graph, bands, "MUL")
    if list(square.inputs) != [bands, bands]:
        raise _refuse(f"{graph.name(bands)} is not squared")
    power = _only(graph, square.outputs[0], "POW")
    if power.inputs[0] != square.outputs[0]:
        raise _refuse(f"the POW after {graph.name(bands)} does not raise its square")
    _scalar(graph, power)  # the exponent: one constant
    name, signature = graph.name(power.outputs[0]), graph.signature(square.outputs[0])
    logs = graph.add_activation(f"{name}/log", signature)
    scaled = graph.add_activation(f"{name}/log_scaled", signature)
    at = graph.sub.operators.index(power)
    graph.sub.operators[at : at + 1] = [
        graph.new_op("LOG", [square.outputs[0]], [logs], None),
        graph.new_op("MUL", [logs, power.inputs[1]], [scaled], schema.MulOptionsT()),
        graph.new_op("EXP", [scaled], [power.outputs[0]], schema.ExpOptionsT()),
    ]


def _add_embedding_output(graph: Graph) -> None:
    """Expose the input of the FULLY_CONNECTED that writes output 0 (the logits)."""
    head = _expect(graph, graph.producer(graph.sub.outputs[0]), "FULLY_CONNECTED", "at output 0")
    if head.inputs[0] not in list(graph.sub.outputs):
        graph.sub.outputs = [*list(graph.sub.outputs), head.inputs[0]]


def rewrite_birdnet(model_bytes: bytes) -> bytes:
    """The BirdNET model with each mel branch as one strided convolution, the embedding as
    output 1."""
    schema, flatbuffers = tflite_schema()
    model = unpack(model_bytes, schema)
    graph = Graph(model, schema)
    rffts = [op for op in graph.sub.operators if graph.kind(op) == "RFFT2D"]
    if not rffts:
        raise ModelArtifactError("not a BirdNET graph: it has no RFFT2D op to fold")
    affines: Dict[int, _Affine] = {}
    for rfft in rffts:
        _fold_branch(graph, rfft, affines)
    _add_embedding_output(graph)
    drop_dead_ops(graph)
    if "RFFT2D" in {graph.kind(op) for op in graph.sub.operators}:
        raise ModelArtifactError("not a BirdNET graph: an RFFT2D output is still read elsewhere")
    compact(model)
    aligned_buffers(model, schema)
    builder = flatbuffers.Builder(len(model_bytes) + (8 << 20))
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())
