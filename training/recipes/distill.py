"""The ``distill`` and ``scratch`` recipes: the compact student on raw 3 s chunks.

``distill`` trains with the KD loss against BirdNET's logits for the target species (teacher
filtering, pseudo-labels on unlabelled audio at a small weight); ``scratch`` is the same
student, data and augmentation on the labels alone (α = 0, no teacher filter, no
pseudo-labels): the baseline that shows what distillation adds. Both stop early on the
validation split's recording-level macro AP (head.py's, so the numbers compare).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from birdd.training.augment import AugmentOptions
from birdd.training.features.audio import cut_windows
from birdd.training.loop import Batch, History, LoopConfig, fit
from birdd.training.models.prune import prune_student
from birdd.training.models.qat import Affine, QATStudent
from birdd.training.models.student import Student, new_student
from birdd.training.recipes.chunks import ChunkDataset, Chunks, crop
from birdd.training.recipes.head import evaluation_targets, macro_ap, mixup, recording_scores
from birdd.training.recipes.kd import KDOptions, kd_loss
from birdd.training.recipes.targets import WindowSet


@dataclass
class StudentOptions:
    size: str = "small"
    kd: KDOptions = field(default_factory=KDOptions)
    teacher_min: float = 0.1  # 0 turns teacher filtering off
    pseudo_weight: float = 0.05  # sample weight of pseudo-labelled windows
    augment: AugmentOptions = field(default_factory=AugmentOptions)
    workers: int = 1  # DataLoader processes running the augmentation
    prune_keep: float = 1.0  # share of channels structured pruning keeps (1: no pruning)
    prune_epochs: int = 2  # fine-tuning epochs after pruning
    qat_epochs: int = 2  # quantisation-aware fine-tuning epochs before the export (0: none)
    loop: LoopConfig = field(
        default_factory=lambda: LoopConfig(
            epochs=20, batch_size=32, lr=3e-3, weight_decay=1e-3, warmup_epochs=1, patience=6
        )
    )

    def as_scratch(self) -> StudentOptions:
        """The same student on labels alone."""
        return replace(self, kd=replace(self.kd, alpha=0.0), teacher_min=0.0, pseudo_weight=0.0)


def student_logits(model: torch.nn.Module, windows: np.ndarray, batch: int = 64) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return np.concatenate(
            [model(torch.as_tensor(windows[i : i + batch])).numpy()
             for i in range(0, len(windows), batch)]
        ) if len(windows) else np.zeros((0, model.classes), np.float32)  # fmt: skip


def split_windows(audio: Sequence[np.ndarray], rate: int, window: int, hop: int) -> np.ndarray:
    """All windows of the recordings, in the order ``window_set`` lists their features."""
    return np.concatenate([cut_windows(a, window, hop, rate) for a in audio])


def _loader(dataset: ChunkDataset, options: StudentOptions, epoch: int):
    dataset.set_epoch(epoch)
    order = torch.Generator().manual_seed(options.loop.seed * 1000 + epoch)
    return torch.utils.data.DataLoader(
        dataset, batch_size=options.loop.batch_size, shuffle=True, generator=order,
        num_workers=options.workers, drop_last=len(dataset) > options.loop.batch_size,
        persistent_workers=False,
    )  # fmt: skip


def train_student(
    chunks: Chunks,
    dataset: ChunkDataset,
    val: WindowSet,
    val_windows: np.ndarray,
    options: StudentOptions,
    checkpoint=None,
    label: str = "student",
    model: Optional[torch.nn.Module] = None,
) -> Tuple[torch.nn.Module, History]:
    """Fit a student (a new one, or ``model`` further: fine-tuning after pruning); early
    stopping on ``val``'s recording-level macro AP."""
    torch.manual_seed(options.loop.seed)
    model = model or new_student(options.size, chunks.targets.shape[1])
    steps = max(1, len(dataset) // options.loop.batch_size)
    truth = evaluation_targets(val)

    def batches(epoch: int) -> Iterator[Batch]:
        if epoch < 0:  # the loop counts the steps of an epoch: no need to load the audio
            return iter([()] * steps)
        return iter(_loader(dataset, options, epoch))

    def loss_of(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        audio, teacher, targets, labelled, weight = batch
        if options.augment.mixup_alpha > 0 and len(audio) > 1:
            known = ~torch.isnan(teacher)
            audio, teacher, targets, weight = mixup(
                [audio, torch.nan_to_num(teacher), targets, weight.float()[:, None]],
                options.augment.mixup_alpha,
            )
            weight = weight[:, 0]
            # A mixed row keeps its own row's labelled flag and teacher mask.
            teacher = torch.where(known, teacher, torch.full_like(teacher, float("nan")))
        return kd_loss(model(audio), teacher, targets, options.kd, labelled, weight.float())

    def validate(model: torch.nn.Module) -> float:
        logits = student_logits(model, val_windows)  # type: ignore[arg-type]
        return macro_ap(truth, recording_scores(logits, val))

    history = fit(model, batches, loss_of, validate, options.loop, checkpoint, label)
    return model, history


def _tuning(options: StudentOptions, epochs: int) -> StudentOptions:
    """Fine-tuning after pruning or for int8: a tenth of the learning rate, no warm-up."""
    loop = replace(
        options.loop, epochs=epochs, lr=options.loop.lr / 10, warmup_epochs=0, patience=epochs
    )
    return replace(options, loop=loop)


def prune_and_tune(
    model: Student, dataset: ChunkDataset, val: WindowSet, val_windows: np.ndarray,
    options: StudentOptions, checkpoint=None,
) -> Tuple[Student, History]:  # fmt: skip
    """Structured pruning to ``options.prune_keep`` of the channels, then fine-tuning at a
    tenth of the learning rate (no warm-up) for ``options.prune_epochs``."""
    pruned = prune_student(model, options.prune_keep)
    tune = _tuning(options, options.prune_epochs)
    tuned, history = train_student(
        dataset.chunks, dataset, val, val_windows, tune, checkpoint, "prune", pruned
    )
    return tuned, history  # type: ignore[return-value]


def quantisation_aware(
    model: Student, ranges: Dict[str, Affine], dataset: ChunkDataset, val: WindowSet,
    val_windows: np.ndarray, options: StudentOptions, checkpoint=None,
) -> Tuple[Student, History]:  # fmt: skip
    """``options.qat_epochs`` of fine-tuning through the int8 export's arithmetic
    (``QATStudent``, activation ranges fixed at ``ranges``), same loss and data, a tenth of
    the learning rate; early stopping on the fake-quantised validation AP. The fine-tuned
    float student is returned: its int8 export computes what training saw."""
    tune = _tuning(options, options.qat_epochs)
    wrapped = QATStudent(model, ranges)
    _, history = train_student(
        dataset.chunks, dataset, val, val_windows, tune, checkpoint, "qat", wrapped
    )
    return model.eval(), history


def calibration_windows(dataset: ChunkDataset, count: int, seed: int) -> np.ndarray:
    """Un-augmented training chunks for int8 calibration."""
    rng = np.random.default_rng(seed)
    c = dataset.chunks
    picks = rng.choice(len(c), size=min(count, len(c)), replace=False)
    return np.stack(
        [crop(dataset.audio[c.recording[i]], c.start[i], dataset.window) for i in picks]
    )
