"""Structured (channel) pruning of a trained student: the narrower network is a plain
``Student`` of a smaller ``StudentSpec``, with the kept channels' weights copied in, so export,
int8 and the engines need nothing new.

Each pruned layer is a conv + batch norm + ReLU that feeds the next block's depthwise conv
channel for channel: the stem and every block's pointwise conv. A channel's importance is its
batch norm's |γ| (the scale of what the ReLU passes on; Liu et al. 2017, "network slimming");
each layer keeps its ``keep`` most important share (at least ``min_channels``), and the layers
that read it (the next depthwise and pointwise convs, or the classifier's mean and max halves)
keep the same channels.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

from birdd.training.models.student import SeparableBlock, Student, StudentSpec


def _kept(bn: nn.BatchNorm2d, keep: float, min_channels: int) -> torch.Tensor:
    count = max(min_channels, round(keep * bn.num_features))
    count = min(count, bn.num_features)
    return torch.argsort(bn.weight.detach().abs(), descending=True)[:count].sort().values


def _copy_conv_bn(
    source: nn.Sequential, target: nn.Sequential, out_idx: torch.Tensor, in_idx: torch.Tensor
) -> None:
    """conv + bn of ``source`` restricted to ``out_idx`` outputs and ``in_idx`` inputs (the
    inputs of a depthwise conv are its outputs: its weight has one input per group)."""
    conv, bn = source[0], source[1]
    weight = conv.weight.detach()[out_idx]
    if conv.groups == 1:
        weight = weight[:, in_idx]
    target[0].weight.data.copy_(weight)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(target[1], name).data.copy_(getattr(bn, name).detach()[out_idx])


def pruned_channels(model: Student, keep: float, min_channels: int = 4) -> List[torch.Tensor]:
    """The channels each pruned layer keeps: the stem's, then each block's pointwise's."""
    layers = [model.stem[1]] + [block.pointwise[1] for block in model.blocks]
    return [_kept(bn, keep, min_channels) for bn in layers]


def prune_student(model: Student, keep: float, min_channels: int = 4) -> Student:
    """A narrower copy of ``model``; ``keep`` in (0, 1] is the share of channels each layer
    keeps. The copy computes the same function up to the channels it drops."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep {keep}: a share of channels in (0, 1]")
    kept = pruned_channels(model, keep, min_channels)
    strides = [stride for _, stride in model.spec.blocks]
    spec = StudentSpec(
        len(kept[0]), tuple((len(k), s) for k, s in zip(kept[1:], strides)), model.spec.dropout
    )
    pruned = Student(spec, model.classes, model.frontend.params)
    pruned.norm.load_state_dict(model.norm.state_dict())
    _copy_conv_bn(model.stem, pruned.stem, kept[0], torch.arange(1))
    for index, (block, target) in enumerate(zip(model.blocks, pruned.blocks)):
        _copy_block(block, target, kept[index], kept[index + 1])
    last = kept[-1]
    width = model.classifier.in_features // 2
    columns = torch.cat([last, last + width])  # the mean half, then the max half
    pruned.classifier.weight.data.copy_(model.classifier.weight.detach()[:, columns])
    pruned.classifier.bias.data.copy_(model.classifier.bias.detach())
    return pruned


def _copy_block(
    block: SeparableBlock, target: SeparableBlock, inputs: torch.Tensor, outputs: torch.Tensor
) -> None:
    _copy_conv_bn(block.depthwise, target.depthwise, inputs, inputs)
    _copy_conv_bn(block.pointwise, target.pointwise, outputs, inputs)


def widths(model: Student) -> Sequence[int]:
    """The stem's and each block's output channels."""
    return [model.spec.stem, *(c for c, _ in model.spec.blocks)]
