"""The student's parts: the DFT/mel front end against librosa's mel spectrogram, the torch
front end against the numpy one, the KD loss against a hand computation, the student's shape,
size and multiply-adds, and an exported graph with no FFT op."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="needs the training extra: pip install 'birdd[training]'"
)
onnx = pytest.importorskip("onnx", reason="needs the training extra")

from birdd.engines.frontend import (  # noqa: E402
    FrontendParams,
    frame_count,
    log_mel,
    lowpass_taps,
    mel_filterbank,
)
from birdd.training.features.audio import read_mono  # noqa: E402
from birdd.training.models.flops import onnx_macs  # noqa: E402
from birdd.training.models.frontend import LogMel  # noqa: E402
from birdd.training.models.student import new_student, parameter_count  # noqa: E402
from birdd.training.recipes.kd import KDOptions, kd_loss  # noqa: E402

torch.set_num_threads(1)

AUDIO = Path(__file__).parent / "data" / "audio"
PARAMS = FrontendParams()
DECIMATING = FrontendParams(decimate=2, n_fft=160, hop=160)  # 24 kHz after a low-pass
WINDOW = 144000


def bird_windows(count: int = 2) -> np.ndarray:
    audio = read_mono(str(AUDIO / "opensoundscape_1min_first30s.flac"), PARAMS.sample_rate)
    return audio[: count * WINDOW].reshape(count, WINDOW)


def test_mel_bank_is_librosas():
    librosa = pytest.importorskip("librosa", reason="librosa is in the dev extra")
    ours = mel_filterbank(24000, 160, 32, 300.0, 10000.0)
    theirs = librosa.filters.mel(sr=24000, n_fft=160, n_mels=32, fmin=300.0, fmax=10000.0)
    assert np.abs(ours - theirs).max() < 1e-6 * theirs.max()


def test_too_many_bands_for_the_dft_is_refused():
    with pytest.raises(ValueError, match="catch no DFT bin"):
        mel_filterbank(24000, 128, 40, 300.0, 10000.0)


@pytest.mark.parametrize("params", [PARAMS, DECIMATING], ids=["48kHz", "decimated"])
def test_log_mel_matches_librosa_on_a_real_recording(params):
    """Same (decimated) signal, same STFT (Hann, no centring), same Slaney mel bank: the numpy
    front end (fixed DFT matrices, only the bins under the bank) and librosa's FFT agree."""
    librosa = pytest.importorskip("librosa", reason="librosa is in the dev extra")
    windows = bird_windows()
    ours = log_mel(windows, params)
    signal = windows
    if params.decimate > 1:
        taps = lowpass_taps(params)
        signal = np.stack([np.convolve(w, taps, "valid")[:: params.decimate] for w in windows])
    power = librosa.feature.melspectrogram(
        y=signal.astype(np.float64), sr=params.stft_rate, n_fft=params.n_fft,
        hop_length=params.hop, center=False, window="hann", power=2.0, n_mels=params.n_mels,
        fmin=params.fmin, fmax=params.fmax, htk=False, norm="slaney",
    )  # fmt: skip
    reference = np.log(power + params.log_floor)
    assert ours.shape == reference.shape == (2, params.n_mels, frame_count(params, WINDOW))
    assert np.abs(ours - reference).max() < 1e-4  # log units; float32 rounding of ours


def test_lowpass_passes_the_band_and_stops_what_would_alias():
    taps = lowpass_taps(DECIMATING)
    response = np.abs(np.fft.rfft(taps, 48000))  # 1 Hz per bin
    assert abs(response[1000] - 1) < 0.01 and abs(response[6000] - 1) < 0.02
    # Above 14 kHz a tone folds (at 24 kHz) to below 10 kHz, inside the mel bank.
    assert response[14000:].max() < 10 ** (-40 / 20)


@pytest.mark.parametrize("params", [PARAMS, DECIMATING], ids=["48kHz", "decimated"])
def test_torch_front_end_is_the_numpy_one(params):
    windows = bird_windows()
    expected = log_mel(windows, params)
    with torch.no_grad():
        got = LogMel(params)(torch.as_tensor(windows)).numpy()
    assert np.abs(got - expected).max() < 1e-3


def test_front_end_parameters_round_trip_through_json():
    assert FrontendParams.from_json(PARAMS.to_json()) == PARAMS
    with pytest.raises(ValueError):
        FrontendParams.from_json({"type": "other"})


def test_kd_loss_matches_a_hand_computation():
    student = torch.tensor([[2.0, -1.0]])
    teacher = torch.tensor([[3.0, float("nan")]])  # the teacher lacks the second class
    targets = torch.tensor([[1.0, 0.0]])
    t, alpha = 3.0, 0.5
    p, q = 1 / (1 + math.exp(-1.0)), 1 / (1 + math.exp(-2 / 3))  # σ(3/3), σ(2/3)
    kl = p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    bce = (-math.log(1 / (1 + math.exp(-2.0))) - math.log(1 - 1 / (1 + math.exp(1.0)))) / 2
    expected = alpha * kl * t * t + (1 - alpha) * bce
    got = kd_loss(student, teacher, targets, KDOptions(alpha, t))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # Unlabelled windows (pseudo-labels) keep only the KL term.
    unlabelled = kd_loss(student, teacher, targets, KDOptions(alpha, t), torch.tensor([False]))
    assert float(unlabelled) == pytest.approx(alpha * kl * t * t, rel=1e-5)
    # alpha 0 is the scratch recipe: labels alone.
    assert float(kd_loss(student, teacher, targets, KDOptions(0.0, t))) == pytest.approx(bce)


def test_kd_loss_is_zero_when_the_student_is_the_teacher():
    logits = torch.tensor([[4.0, -2.0, 0.5]])
    assert float(kd_loss(logits, logits, torch.zeros(1, 3), KDOptions(1.0, 3.0))) < 1e-7


@pytest.mark.parametrize("size, max_params", [("small", 80_000), ("tiny", 15_000)])
def test_student_shape_size_and_exported_graph(size, max_params):
    model = new_student(size, 13).eval()
    audio = torch.as_tensor(bird_windows())
    assert model(audio).shape == (2, 13)
    assert parameter_count(model) <= max_params
    buffer = io.BytesIO()
    torch.onnx.export(
        model, (audio,), buffer, input_names=["audio"], output_names=["logits"],
        dynamic_axes={"audio": {0: "batch"}}, opset_version=17, dynamo=False,
    )  # fmt: skip
    graph = onnx.load_from_string(buffer.getvalue())
    ops = {node.op_type for node in graph.graph.node}
    assert not ops & {"DFT", "STFT", "MelWeightMatrix"}
    # BirdNET V2.4 (its ONNX conversion, counted the same way): 481.6 M multiply-adds.
    assert onnx_macs(graph) * 20 <= 481_605_984
