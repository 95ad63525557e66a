"""The compact student CNN: the DFT/mel front end, then depthwise-separable conv blocks.

Raw 48 kHz windows in (BirdNET's input, so the pipeline needs no change), one logit per class
out (sigmoid at inference, as the sidecar's activation says). Each block is a depthwise 3×3
convolution and a pointwise 1×1 convolution, each with batch norm and ReLU; the last block's
channels are pooled (mean over frequency, then mean and max over time) into a linear layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Tuple

import torch
from torch import nn

from birdd.engines.frontend import FrontendParams
from birdd.training.models.frontend import LogMel


@dataclass(frozen=True)
class StudentSpec:
    """The network's shape: the stem's channels and each block's (channels, stride)."""

    stem: int
    blocks: Tuple[Tuple[int, int], ...]
    dropout: float = 0.2

    def to_json(self) -> Dict[str, object]:
        return asdict(self)


# Strides shrink the [n_mels, frames] = [32, 449] map fast: the front end's many frames are
# cheap to compute but every block pays for each position.
SIZES: Dict[str, StudentSpec] = {
    "small": StudentSpec(24, ((32, 2), (48, 2), (64, 1), (96, 2), (128, 1), (160, 2))),
    "tiny": StudentSpec(12, ((16, 2), (24, 2), (32, 2), (48, 1), (64, 2))),
}


def spec_for(size: str) -> StudentSpec:
    if size not in SIZES:
        raise ValueError(f"student size {size!r}: choose one of {', '.join(SIZES)}")
    return SIZES[size]


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SeparableBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.depthwise = _conv_bn(c_in, c_in, 3, stride, c_in)
        self.pointwise = _conv_bn(c_in, c_out, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class Student(nn.Module):
    """Raw audio ``[B, samples]`` → logits ``[B, classes]``."""

    def __init__(self, spec: StudentSpec, classes: int, frontend: FrontendParams) -> None:
        super().__init__()
        self.spec, self.classes = spec, classes
        self.frontend = LogMel(frontend)
        self.norm = nn.BatchNorm2d(1)  # the log-mel's level and spread, learned
        self.stem = _conv_bn(1, spec.stem, 3, 2, 1)
        widths = [spec.stem] + [c for c, _ in spec.blocks]
        self.blocks = nn.Sequential(
            *(SeparableBlock(widths[i], c, s) for i, (c, s) in enumerate(spec.blocks))
        )
        self.dropout = nn.Dropout(spec.dropout)
        self.classifier = nn.Linear(2 * widths[-1], classes)

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """``[B, channels, bands, frames]`` after the last block."""
        x = self.norm(self.frontend(audio)[:, None])
        return self.blocks(self.stem(x))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = self.features(audio).mean(dim=2)
        pooled = torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1)
        return self.classifier(self.dropout(pooled))


DEFAULT_FRONTEND = FrontendParams()


def new_student(size: str, classes: int, frontend: FrontendParams = DEFAULT_FRONTEND) -> Student:
    return Student(spec_for(size), classes, frontend)


def parameter_count(model: nn.Module) -> int:
    """Trained parameters (the front end's fixed matrices are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


def block_widths(model: Student) -> List[int]:
    return [block.pointwise[0].out_channels for block in model.blocks]
