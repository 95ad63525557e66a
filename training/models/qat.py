"""Quantisation-aware fine-tuning: the student's forward pass with the int8 export's arithmetic
faked in float, straight-through gradients (round and clamp pass the gradient inside the range).

It mirrors what ``training/export/student.py``'s onnxruntime static int8 file (QDQ) computes:
- weights of every convolution and of the classifier: int8, per output channel, symmetric
  ([-127, 127], scale max|w| / 127), batch norm folded in first (the ONNX export folds it, so
  the quantised weight is the folded one); biases int32 at scale input scale × weight scale;
- activations: per tensor, at the export's fixed points: the audio input and the DFT
  convolution's output at 16 bits (symmetric); the log-mel, the input batch norm's output,
  every conv's output after its ReLU (a range from 0), the two pooled halves and their
  concatenation at int8 (asymmetric). The front end's power, mel and log and the logits stay
  in float, as in the file. The input batch norm runs in float: its one weight is exact at
  int8, and its int32 bias rounds to a small fraction of the output's step.

The activation scales and zero points are fixed, read from an int8 file the export's own
calibration made (``training/export/qdq.py``). Batch norm statistics are frozen (folded);
γ and β still train through the folding. The wrapped ``Student`` keeps its structure, so the
export after fine-tuning is the unchanged one.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from birdd.training.models.student import Student

WEIGHT_MAX = 127  # symmetric int8 weights: [-127, 127]
Affine = Tuple[float, int, int]  # an activation's scale, zero point and bits (8 or 16)


def activation_points(model: Student) -> List[str]:
    """The names of the fake-quantised activations, in forward order."""
    convs = [f"conv{i}" for i in range(len(conv_layers(model)))]
    return ["audio", "dft", "logmel", "norm", *convs, "mean", "max", "concat"]


def conv_layers(model: Student) -> List[nn.Sequential]:
    """Each conv + batch norm + ReLU of the network, in order (the stem, then each block's)."""
    layers = [model.stem]
    for block in model.blocks:
        layers += [block.depthwise, block.pointwise]
    return layers


def fake_activation(x: torch.Tensor, affine: Affine) -> torch.Tensor:
    scale, zero_point, bits = affine
    low = -(2 ** (bits - 1))
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, low, -low - 1)


def fake_weight(weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per output channel symmetric int8 (axis 0); the scales too (the bias needs them)."""
    flat = weight.detach().reshape(len(weight), -1)
    scale = (flat.abs().amax(dim=1) / WEIGHT_MAX).clamp_min(1e-12)
    zeros = torch.zeros(len(weight), dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(
        weight, scale, zeros, 0, -WEIGHT_MAX, WEIGHT_MAX
    ), scale


def fake_bias(bias: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int32 at ``scale`` (input scale × each channel's weight scale): rounding only."""
    return bias + (torch.round(bias / scale) * scale - bias).detach()


def folded(layer: nn.Sequential) -> Tuple[torch.Tensor, torch.Tensor]:
    """Conv (no bias) + batch norm with its running statistics as one weight and bias."""
    conv, norm = layer[0], layer[1]
    factor = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    weight = conv.weight * factor.reshape(-1, 1, 1, 1)
    return weight, norm.bias - norm.running_mean * factor


class QATStudent(nn.Module):
    """``student`` computed as its int8 export computes it; ``ranges``: each of
    ``activation_points(student)`` → (scale, zero point)."""

    def __init__(self, student: Student, ranges: Dict[str, Affine]) -> None:
        super().__init__()
        missing = [p for p in activation_points(student) if p not in ranges]
        if missing:
            raise ValueError(f"quantisation ranges lack {', '.join(missing)}")
        if student.frontend.params.decimate > 1:
            raise ValueError(
                "quantisation-aware training supports the front end without decimation"
            )
        self.student, self.ranges, self.classes = student, dict(ranges), student.classes

    def _act(self, x: torch.Tensor, point: str) -> torch.Tensor:
        return fake_activation(x, self.ranges[point])

    def _log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        frontend = self.student.frontend
        x = self._act(audio[:, None, :], "audio")
        weight, _ = fake_weight(frontend.dft)
        x = self._act(F.conv1d(x, weight, stride=frontend.params.hop), "dft")
        real, imaginary = x[:, : frontend.bins], x[:, frontend.bins :]
        x = F.conv1d(real * real + imaginary * imaginary, frontend.mel)
        return torch.log(x + frontend.params.log_floor)

    def _conv(
        self, x: torch.Tensor, layer: nn.Sequential, index: int, scale: float
    ) -> torch.Tensor:
        weight, bias = folded(layer)
        weight, weight_scale = fake_weight(weight)
        conv = layer[0]
        x = F.conv2d(
            x, weight, fake_bias(bias, scale * weight_scale), conv.stride, conv.padding,
            groups=conv.groups,
        )  # fmt: skip
        return self._act(torch.relu(x), f"conv{index}")

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        student = self.student
        x = self._act(self._log_mel(audio)[:, None], "logmel")
        norm = student.norm
        x = F.batch_norm(
            x, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps
        )
        x = self._act(x, "norm")
        for index, layer in enumerate(conv_layers(student)):
            previous = "norm" if index == 0 else f"conv{index - 1}"
            x = self._conv(x, layer, index, self.ranges[previous][0])
        x = x.mean(dim=2)
        halves = [self._act(x.mean(dim=2), "mean"), self._act(x.amax(dim=2), "max")]
        pooled = student.dropout(self._act(torch.cat(halves, dim=1), "concat"))
        weight, weight_scale = fake_weight(student.classifier.weight)
        bias = fake_bias(student.classifier.bias, self.ranges["concat"][0] * weight_scale)
        return F.linear(pooled, weight, bias)
