"""The distillation loss: L = α·KL(teacher_T ‖ student_T)·T² + (1 − α)·BCE(labels).

The KL is per class and binary (sigmoid), not over a softmax across the target species:
BirdCLEF's winner trained with a softmax because each of its chunks held a bird, but birdd
trains on negatives (urban noise, no bird at all) and on windows with several species, and a
softmax must put all its mass on some species. Per class, the teacher's tempered probability
p = σ(z_t / T) and the student's q = σ(z_s / T) give
KL = p·log(p/q) + (1 − p)·log((1 − p)/(1 − q)), averaged over the classes that count;
T² keeps its gradients on the scale of the label term's as T grows (Hinton et al. 2015).

Masks: a class the teacher lacks (BirdNET has no such species: NaN logits) has no KL term;
a window without labels (unlabelled soundscapes: pseudo-labels) has no label term and carries
its own, small, sample weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn


@dataclass(frozen=True)
class KDOptions:
    alpha: float = 0.5  # the KL term's share; 0 trains on the labels alone (scratch)
    temperature: float = 3.0


def binary_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(Bernoulli(σ(t)) ‖ Bernoulli(σ(s))), stable for large logits."""
    p = torch.sigmoid(teacher_logits)
    log_p, log_not_p = (
        nn.functional.logsigmoid(teacher_logits),
        nn.functional.logsigmoid(-teacher_logits),
    )
    log_q, log_not_q = (
        nn.functional.logsigmoid(student_logits),
        nn.functional.logsigmoid(-student_logits),
    )
    return p * (log_p - log_q) + (1 - p) * (log_not_p - log_not_q)


def _masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (values * weights).sum() / weights.sum().clamp_min(1e-12)


def kd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    targets: torch.Tensor,
    options: KDOptions,
    labelled: Optional[torch.Tensor] = None,
    sample_weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``student``, ``teacher``, ``targets``: ``[B, K]`` (teacher NaN where it lacks a class);
    ``labelled``: ``[B]`` bool, the windows whose targets count (default all);
    ``sample_weight``: ``[B]`` (default 1)."""
    count = len(student)
    weight = torch.ones(count) if sample_weight is None else sample_weight
    labelled = torch.ones(count, dtype=torch.bool) if labelled is None else labelled
    loss = student.new_zeros(())
    if options.alpha > 0:
        known = ~torch.isnan(teacher)
        t = options.temperature
        kl = binary_kl(torch.nan_to_num(teacher) / t, student / t)
        kl_weight = known.float() * weight[:, None]
        loss = loss + options.alpha * t * t * _masked_mean(kl, kl_weight)
    if options.alpha < 1 and bool(labelled.any()):
        bce = nn.functional.binary_cross_entropy_with_logits(student, targets, reduction="none")
        bce_weight = (labelled.float() * weight)[:, None].expand_as(bce)
        loss = loss + (1 - options.alpha) * _masked_mean(bce, bce_weight)
    return loss
