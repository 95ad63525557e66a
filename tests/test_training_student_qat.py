"""Quantisation-aware training's fake quantisation is the int8 export's arithmetic: a pruned tiny
student (batch norm statistics set, as after training) through ``QATStudent`` gives the logits
of its onnxruntime int8 file within a hundredth of the last int8 tensor's step; the ranges
read from that file, written back as overrides, quantise to the same file; and gradients
reach the weights through the fake quantisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="needs the training extra: pip install 'birdd[training]'"
)
ort = pytest.importorskip("onnxruntime")

from birdd.engines.models.labels import Species  # noqa: E402
from birdd.training.export.qdq import overrides, read_ranges  # noqa: E402
from birdd.training.export.student import onnx_bytes, quantise_int8  # noqa: E402
from birdd.training.features.audio import read_mono  # noqa: E402
from birdd.training.models.prune import prune_student  # noqa: E402
from birdd.training.models.qat import QATStudent, activation_points, conv_layers  # noqa: E402
from birdd.training.models.student import new_student  # noqa: E402

torch.set_num_threads(1)

AUDIO = Path(__file__).parent / "data" / "audio" / "opensoundscape_1min_first30s.flac"
WINDOW = 144000
SPECIES = [Species(f"Avis {k}", f"Bird {k}", f"b{k}", True) for k in range(3)]


def _windows() -> np.ndarray:
    audio = read_mono(str(AUDIO), 48000)
    return audio[: 10 * WINDOW].reshape(10, WINDOW).astype(np.float32)


def _student():
    torch.manual_seed(0)
    model = prune_student(new_student("tiny", len(SPECIES)), 0.5)
    with torch.no_grad():
        for layer in conv_layers(model):
            norm = layer[1]
            norm.weight.uniform_(2.0, 3.0), norm.bias.uniform_(-0.2, 0.2)
            norm.running_mean.uniform_(-0.2, 0.2), norm.running_var.uniform_(0.5, 2.0)
        model.norm.running_mean.fill_(-8.0), model.norm.running_var.fill_(9.0)
        model.classifier.weight.mul_(20)  # logits spread over several units, as trained ones
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qat")
    model, windows = _student(), _windows()
    fp32 = folder / "student.onnx"
    fp32.write_bytes(onnx_bytes(model, WINDOW))
    int8 = quantise_int8(fp32, folder / "student_int8.onnx", model, SPECIES, "s", windows[:6], {})
    return model, windows, fp32, int8


def _onnx_logits(path: Path, windows: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path)).run(None, {"audio": windows})[0]


def test_fake_quantisation_matches_the_int8_file(exported):
    model, windows, _, int8 = exported
    ranges = read_ranges(int8)
    assert set(ranges) == set(activation_points(model))
    with torch.no_grad():
        fake = QATStudent(model, ranges).eval()(torch.as_tensor(windows[6:])).numpy()
        float_logits = model(torch.as_tensor(windows[6:])).numpy()
    onnx_int8 = _onnx_logits(int8, windows[6:])
    step = ranges["concat"][0]  # the last int8 tensor's step (the logits are float)
    assert np.abs(fake - onnx_int8).max() <= step / 100
    # Not trivially close: the float model is more than a step away from the int8 file.
    assert np.abs(float_logits - onnx_int8).max() > step


def test_ranges_written_back_give_the_same_file(exported, tmp_path):
    model, windows, fp32, int8 = exported
    ranges = read_ranges(int8)
    # Calibrated on other windows: the overrides decide the ranges.
    again = quantise_int8(
        fp32,
        tmp_path / "again.onnx",
        model,
        SPECIES,
        "s",
        windows[6:],
        {},
        overrides(fp32, ranges),
    )  # fmt: skip
    assert read_ranges(again) == ranges
    np.testing.assert_array_equal(_onnx_logits(again, windows[6:]), _onnx_logits(int8, windows[6:]))


def test_gradients_pass_the_fake_quantisation(exported):
    model, windows, _, int8 = exported
    wrapped = QATStudent(model, read_ranges(int8))
    wrapped.train()
    wrapped(torch.as_tensor(windows[:2])).sum().backward()
    layers = conv_layers(model)
    grads = [layers[0][0].weight.grad, layers[-1][1].weight.grad, model.classifier.weight.grad]
    assert all(g is not None and float(g.abs().sum()) > 0 for g in grads)
    assert all(p.grad is None for p in model.frontend.buffers())
    model.zero_grad()
