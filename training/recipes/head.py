"""The ``head`` recipe: a linear or small MLP classifier on BirdNET's 1024-d embeddings.

The head scales its input by one number, the training embeddings' spread, inside the model
itself: the exports (ONNX, the numpy weights the engines apply, the merged model) fold it into
the first layer, so inference has no preprocessing of its own (BirdNET-Analyzer's heads were
trained on normalised embeddings and run on raw ones, and fired on pure noise). It neither
centres nor scales per dimension: BirdNET's embeddings are averages of ReLU outputs, near zero
where nothing is heard, and a head that sees near-zero input falls back to its bias (no bird);
centred or standardised per dimension, silence and noise land far from every training
example and the head scored them about 0.6 (measured on the shared negatives: 25 of 92
windows fired at its thresholds, 0 without).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from birdd.engines.head import HeadWeights
from birdd.training.loop import Batch, History, LoopConfig, fit
from birdd.training.recipes.targets import WindowSet
from birdd.training.report.metrics import average_precision

LOSSES = ("bce", "focal")
VAL_LOSS_WEIGHT = 0.05


@dataclass
class HeadOptions:
    hidden: int = 0  # 0: a linear head; else one hidden ReLU layer of this width
    dropout: float = 0.2
    loss: str = "bce"
    focal_gamma: float = 2.0
    mixup_alpha: float = 0.4  # 0 turns mixup off
    class_weights: bool = True
    label_smoothing: float = 0.0
    teacher_min: float = 0.1  # 0 turns teacher filtering off
    birdnet_prior: bool = True  # add a learned multiple of BirdNET's logit per shared class
    fallback: bool = True  # per class, keep the embedding part only where it beats BirdNET
    loop: LoopConfig = field(default_factory=LoopConfig)


class HeadModel(nn.Module):
    """Dense layers on the scaled embeddings, plus, for each class BirdNET also has, a learned
    multiple of BirdNET's own logit for it (the prior: ``prior_mask`` 1 there, else 0)."""

    def __init__(
        self, dim: int, classes: int, hidden: int, dropout: float, scale: float, prior_mask=None
    ) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(float(scale)))
        mask = torch.zeros(classes) if prior_mask is None else torch.as_tensor(prior_mask)
        self.register_buffer("prior_mask", mask.to(torch.float32))
        self.prior_scale = nn.Parameter(torch.ones(classes))
        self.dropout = nn.Dropout(dropout)
        self.hidden = nn.Linear(dim, hidden) if hidden else None
        self.out = nn.Linear(hidden or dim, classes)
        if prior_mask is not None:
            # Start as BirdNET (for the classes it has): training refines its scores.
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, embeddings: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """``prior``: BirdNET's logits for the head's classes (0 where it lacks one)."""
        x = embeddings * self.scale
        if self.hidden is not None:
            x = torch.relu(self.hidden(self.dropout(x)))
        return self.out(self.dropout(x)) + self.prior_scale * self.prior_mask * prior

    def dense_layers(self) -> List[Tuple[np.ndarray, np.ndarray]]:
        """The head as dense layers ``x @ W + b`` (ReLU between), the input scale folded
        into the first."""
        linears = [layer for layer in (self.hidden, self.out) if layer is not None]
        layers = [
            (layer.weight.detach().numpy().T.astype(np.float64), layer.bias.detach().numpy())
            for layer in linears
        ]
        weight, bias = layers[0]
        layers[0] = (weight * float(self.scale), bias)
        return [(w.astype(np.float32), b.astype(np.float32)) for w, b in layers]

    def export_weights(self, columns: Sequence[Optional[int]]) -> HeadWeights:
        """What the exports carry: the dense layers, and per class BirdNET's column and the
        multiple of its logit to add (``columns``: each class's column in BirdNET's output)."""
        mask = self.prior_mask.numpy()
        scale = (self.prior_scale.detach().numpy() * mask).astype(np.float32)
        column = np.array(
            [c if c is not None and m else -1 for c, m in zip(columns, mask)], dtype=np.int64
        )
        return HeadWeights(self.dense_layers(), column, scale)


def new_head(train: WindowSet, options: HeadOptions) -> HeadModel:
    scale = 1.0 / (float(train.embeddings.std()) + 1e-6)
    dim, classes = train.embeddings.shape[1], train.targets.shape[1]
    mask = ~np.isnan(train.teacher[0]) if len(train) and options.birdnet_prior else None
    return HeadModel(dim, classes, options.hidden, options.dropout, scale, mask)


def prior_input(windows: WindowSet) -> np.ndarray:
    """BirdNET's logits for the head's classes, 0 for a class BirdNET lacks."""
    return np.nan_to_num(windows.teacher, nan=0.0).astype(np.float32)


def positive_weights(targets: np.ndarray) -> torch.Tensor:
    """sqrt(negatives / positives) per class, within [1, 10]: rare classes count more."""
    positives = (targets >= 1).sum(axis=0)
    ratio = (len(targets) - positives) / np.maximum(positives, 1)
    return torch.as_tensor(np.clip(np.sqrt(ratio), 1, 10), dtype=torch.float32)


def head_loss(logits, targets, options: HeadOptions, pos_weight) -> torch.Tensor:
    if options.label_smoothing:
        targets = targets * (1 - options.label_smoothing) + options.label_smoothing / 2
    bce = nn.functional.binary_cross_entropy_with_logits(
        logits, targets, pos_weight=pos_weight, reduction="none"
    )
    if options.loss == "focal":
        p = torch.sigmoid(logits)
        p_t = p * targets + (1 - p) * (1 - targets)
        bce = bce * (1 - p_t) ** options.focal_gamma
    return bce.mean()


def mixup(tensors: Sequence[torch.Tensor], alpha: float) -> List[torch.Tensor]:
    """Mix each example with another of the batch (weights from Beta(alpha, alpha)); the
    inputs and the targets of one example with the same weight."""
    count = len(tensors[0])
    lam = torch.distributions.Beta(alpha, alpha).sample((count, 1))
    perm = torch.randperm(count)
    return [lam * t + (1 - lam) * t[perm] for t in tensors]


def recording_scores(logits: np.ndarray, windows: WindowSet) -> np.ndarray:
    """``[R, K]``: each recording's highest score over its windows."""
    out = np.full((len(windows.recordings), logits.shape[1]), -np.inf, dtype=np.float32)
    np.maximum.at(out, windows.recording, logits)
    return out


def evaluation_targets(windows: WindowSet) -> np.ndarray:
    """Recording-level truth for metrics: background species are ignored (NaN)."""
    targets = windows.recording_targets()
    return np.where((targets > 0) & (targets < 1), np.nan, targets)


def macro_ap(y: np.ndarray, scores: np.ndarray) -> float:
    values = [average_precision(y[:, k], scores[:, k]) for k in range(y.shape[1])]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def predict_logits(model: HeadModel, embeddings: np.ndarray, prior: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        x = torch.as_tensor(embeddings, dtype=torch.float32)
        return model(x, torch.as_tensor(prior, dtype=torch.float32)).numpy()


def fall_back_to_birdnet(model: HeadModel, val: WindowSet) -> List[int]:
    """Per class BirdNET has, keep the head only where it ranks ``val``'s recordings better
    than BirdNET does (a higher AP); elsewhere the class's score becomes BirdNET's logit
    exactly (dense row and bias zero, multiple 1). Returns the classes that fell back.

    Why: on recordists it was not trained on, the dense part (1,024 weights a class, learned
    from a few dozen recordists) more often moved a recording's rank the wrong way than the
    right way (recordist-fold cross-validation, docs/training.md); a class moves from BirdNET
    only where validation recordings say it should. Works for MLP heads too (the last layer's
    row of a class is zeroed). ``val`` should hold every window (no teacher filter).
    """
    truth = evaluation_targets(val)
    head = recording_scores(predict_logits(model, val.embeddings, prior_input(val)), val)
    birdnet = recording_scores(np.nan_to_num(val.teacher, nan=-60.0), val)
    fell_back = []
    with torch.no_grad():
        for k in np.flatnonzero(model.prior_mask.numpy() > 0):
            better = average_precision(truth[:, k], head[:, k]) > average_precision(
                truth[:, k], birdnet[:, k]
            )
            if better:  # False too where validation has no positive (NaN)
                continue
            model.out.weight[k], model.out.bias[k], model.prior_scale[k] = 0.0, 0.0, 1.0
            fell_back.append(int(k))
    return fell_back


def train_head(
    train: WindowSet, val: WindowSet, options: HeadOptions, checkpoint=None
) -> Tuple[HeadModel, History]:
    """Fit a head on ``train``; early stopping on ``val``'s recording-level macro AP."""
    if options.loss not in LOSSES:
        raise ValueError(f"loss {options.loss!r}: choose one of {', '.join(LOSSES)}")
    torch.manual_seed(options.loop.seed)
    model = new_head(train, options)
    x = torch.as_tensor(train.embeddings, dtype=torch.float32)
    t = torch.as_tensor(prior_input(train))
    y = torch.as_tensor(train.targets, dtype=torch.float32)
    pos_weight = positive_weights(train.targets) if options.class_weights else None
    val_truth = evaluation_targets(val)
    size = options.loop.batch_size

    def batches(epoch: int) -> Iterator[Batch]:
        order = np.random.default_rng(options.loop.seed + max(epoch, 0)).permutation(len(x))
        for start in range(0, len(order), size):
            index = torch.as_tensor(order[start : start + size])
            yield x[index], t[index], y[index]

    def loss_of(model: nn.Module, batch: Batch) -> torch.Tensor:
        if options.mixup_alpha > 0 and len(batch[0]) > 1:
            batch = tuple(mixup(batch, options.mixup_alpha))
        inputs, prior, targets = batch
        return head_loss(model(inputs, prior), targets, options, pos_weight)

    val_x = torch.as_tensor(val.embeddings, dtype=torch.float32)
    val_t = torch.as_tensor(prior_input(val))
    val_y = torch.as_tensor(val.targets, dtype=torch.float32)

    def validate(model: nn.Module) -> float:
        """Recording-level macro AP, less a little of the window loss: on a small validation
        split the AP reaches 1.0 within an epoch or two, and the loss then still tells a
        better-trained head from a barely-trained one."""
        logits = model(val_x, val_t)
        loss = float(head_loss(logits, val_y, options, None))
        score = macro_ap(val_truth, recording_scores(logits.numpy(), val))
        return -loss if np.isnan(score) else score - VAL_LOSS_WEIGHT * loss

    history = fit(model, batches, loss_of, validate, options.loop, checkpoint, "head")
    return model, history
