"""Structured pruning of a student: the narrower network is a plain Student whose channels are
the most important ones by batch norm |γ|, and dropping channels that pass nothing on (γ = β = 0
behind a ReLU) leaves the output unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="needs the training extra: pip install 'birdd[training]'"
)

from birdd.training.features.audio import read_mono  # noqa: E402
from birdd.training.models.prune import prune_student, widths  # noqa: E402
from birdd.training.models.student import new_student, parameter_count  # noqa: E402

torch.set_num_threads(1)

AUDIO = Path(__file__).parent / "data" / "audio" / "opensoundscape_1min_first30s.flac"
WINDOW = 144000


def _windows() -> torch.Tensor:
    audio = read_mono(str(AUDIO), 48000)
    return torch.as_tensor(audio[: 2 * WINDOW].reshape(2, WINDOW))


def _silence_half_the_channels(model) -> None:
    """γ = β = 0 on every second channel of each pruned layer and tiny |γ| nowhere else."""
    for bn in [model.stem[1]] + [block.pointwise[1] for block in model.blocks]:
        with torch.no_grad():
            bn.weight.copy_(torch.linspace(0.5, 1.5, bn.num_features))
            bn.weight[1::2] = 0.0
            bn.bias[1::2] = 0.0


def test_pruning_channels_that_pass_nothing_keeps_the_output():
    torch.manual_seed(0)
    model = new_student("tiny", 5)
    _silence_half_the_channels(model)
    model.eval()
    audio = _windows()
    pruned = prune_student(model, 0.5).eval()
    assert list(widths(pruned)) == [w - w // 2 for w in widths(model)]
    assert parameter_count(pruned) < parameter_count(model) * 0.5
    with torch.no_grad():
        expected, got = model(audio).numpy(), pruned(audio).numpy()
    assert np.abs(got - expected).max() < 1e-4


def test_pruning_live_channels_changes_the_output_and_keep_one_does_not():
    torch.manual_seed(0)
    model = new_student("tiny", 5).eval()
    for module in model.modules():  # batch norms with spread-out scales, all channels live
        if isinstance(module, torch.nn.BatchNorm2d):
            with torch.no_grad():
                module.weight.uniform_(0.2, 2.0)
    audio = _windows()
    with torch.no_grad():
        expected = model(audio).numpy()
        same = prune_student(model, 1.0).eval()(audio).numpy()
        pruned = prune_student(model, 0.5).eval()(audio).numpy()
    assert np.abs(same - expected).max() < 1e-5
    assert np.abs(pruned - expected).max() > 1e-3


def test_keep_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="share of channels"):
        prune_student(new_student("tiny", 3), 0.0)
