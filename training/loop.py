"""The training loop every recipe shares: AdamW, linear warm-up then cosine decay, early
stopping on a validation score, seeded, with a checkpoint after each epoch to resume from."""

from __future__ import annotations

import copy
import logging
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from birdd.training.progress import Progress

log = logging.getLogger("birdd.training")

Batch = Tuple[torch.Tensor, ...]


@dataclass
class LoopConfig:
    epochs: int = 200
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_epochs: int = 5
    patience: int = 25  # epochs without a better validation score before stopping
    seed: int = 0


@dataclass
class History:
    """Per epoch: training loss and validation score; the best epoch and its score."""

    train_loss: List[float] = field(default_factory=list)
    val_score: List[float] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = -math.inf

    def to_json(self) -> Dict[str, object]:
        return asdict(self)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _restore(path: Path, model, optimiser, scheduler) -> Tuple[int, History, Dict]:
    state = torch.load(path, weights_only=False)
    model.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimiser"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    np.random.set_state(state["numpy_rng"])
    log.info("resumed from %s at epoch %d", path, state["epoch"] + 1)
    return state["epoch"] + 1, History(**state["history"]), state["best_model"]


def fit(
    model: torch.nn.Module,
    batches: Callable[[int], Iterator[Batch]],
    loss_of: Callable[[torch.nn.Module, Batch], torch.Tensor],
    validate: Callable[[torch.nn.Module], float],
    config: LoopConfig,
    checkpoint: Optional[Path] = None,
    label: str = "train",
) -> History:
    """Train ``model`` in place; on return it holds the weights of the best validation epoch.

    ``batches(epoch)`` yields the epoch's batches (shuffled by the caller, seeded);
    ``validate(model)`` returns a score to maximise. A ``checkpoint`` that exists is resumed.
    """
    steps_per_epoch = max(1, sum(1 for _ in batches(-1)))
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    total = config.epochs * steps_per_epoch
    warmup = config.warmup_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: lr_factor(step, warmup, total)
    )
    start, history, best = 0, History(), copy.deepcopy(model.state_dict())
    if checkpoint is not None and checkpoint.is_file():
        start, history, best = _restore(checkpoint, model, optimiser, scheduler)
    progress = Progress(label, config.epochs)
    progress.count = start
    for epoch in range(start, config.epochs):
        model.train()
        losses = []
        for batch in batches(epoch):
            optimiser.zero_grad()
            loss = loss_of(model, batch)
            loss.backward()
            optimiser.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        model.eval()
        with torch.no_grad():
            score = validate(model)
        history.train_loss.append(float(np.mean(losses)) if losses else float("nan"))
        history.val_score.append(score)
        if score > history.best_score:
            history.best_score, history.best_epoch = score, epoch
            best = copy.deepcopy(model.state_dict())
        progress.step(f"loss {history.train_loss[-1]:.4f} val {score:.4f}")
        if checkpoint is not None:
            _save(checkpoint, epoch, model, optimiser, scheduler, history, best)
        if epoch - history.best_epoch >= config.patience:
            log.info("early stop at epoch %d: best %.4f at %d", epoch, history.best_score,
                     history.best_epoch)  # fmt: skip
            break
    progress.done()
    model.load_state_dict(best)
    model.eval()
    return history


def _save(path: Path, epoch: int, model, optimiser, scheduler, history: History, best) -> None:
    partial = path.with_suffix(".partial")
    torch.save(
        {
            "epoch": epoch,
            "model": model.state_dict(),
            "optimiser": optimiser.state_dict(),
            "scheduler": scheduler.state_dict(),
            "history": history.to_json(),
            "best_model": best,
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
        },
        partial,
    )
    partial.replace(path)
