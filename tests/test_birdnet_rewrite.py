"""The rewritten BirdNET (RFFT + mel folded into one matmul) scores real audio like the original.

Needs BirdNET installed ('birdd models install birdnet', done by tests/install.sh) and the
shared test recordings (``$BIRDD_TEST_AUDIO``, default ``../shared/audio``).
"""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from ai_edge_litert.interpreter import Interpreter
from birdd_testing import AUDIO

from birdd.engines.birdnet_rewrite import folded_weight, output_names, rewrite_birdnet
from birdd.engines.errors import ModelArtifactError
from birdd.engines.install import BIRDNET_META, BIRDNET_MODEL
from birdd.engines.modeldir import models_dir

WINDOW = 144000
RATE = 48000
EMBEDDING = "model/GLOBAL_AVG_POOL/Mean"
RECORDINGS = ["soundscapes/XC563936_soundscape.mp3", "soundscapes/tawnyowl.wav"]


@pytest.fixture(scope="module")
def original_path() -> Path:
    return models_dir() / "birdnet" / BIRDNET_MODEL.name


@pytest.fixture(scope="module")
def rewritten_path(original_path, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("birdnet") / "fast.tflite"
    target.write_bytes(rewrite_birdnet(original_path.read_bytes()))
    return target


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    """3 s windows from t = 0 of real recordings, the last partial one zero-padded."""
    chunks = []
    for name in RECORDINGS:
        path = AUDIO / name
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
        assert rate == RATE, f"{name} is {rate} Hz, the test expects {RATE}"
        mono = audio.mean(axis=1)
        padded = np.zeros(-(-len(mono) // WINDOW) * WINDOW, np.float32)
        padded[: len(mono)] = mono
        chunks.append(padded.reshape(-1, WINDOW))
    return np.concatenate(chunks)


def run(path: Path, batch: np.ndarray, size: int, threads: int = 2) -> dict:
    """Every output of the model, by name, for ``batch`` scored ``size`` windows at a time."""
    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, [size, WINDOW])
    interpreter.allocate_tensors()
    outputs = interpreter.get_output_details()
    found = {detail["name"]: [] for detail in outputs}
    padded = np.zeros((-(-len(batch) // size) * size, WINDOW), np.float32)
    padded[: len(batch)] = batch
    for start in range(0, len(padded), size):
        interpreter.set_tensor(index, padded[start : start + size])
        interpreter.invoke()
        for detail in outputs:
            found[detail["name"]].append(interpreter.get_tensor(detail["index"]).copy())
    return {name: np.concatenate(parts)[: len(batch)] for name, parts in found.items()}


def test_folded_weight_equals_window_rfft_real_part_mel():
    rng = np.random.default_rng(0)
    n = 16
    mel = rng.random((4, n // 2 + 1)).astype(np.float32)
    window = np.hanning(n).astype(np.float32)
    frames = rng.standard_normal((3, 5, n)).astype(np.float32)
    expected = np.real(np.fft.rfft(frames * window, axis=-1)) @ mel.T
    np.testing.assert_allclose(frames @ folded_weight(mel, window).T, expected, atol=1e-5)


def op_kinds(path: Path) -> list:
    interpreter = Interpreter(model_path=str(path), num_threads=1)
    return [op["op_name"] for op in interpreter._get_ops_details()]


def test_rewritten_graph_has_no_fft_and_two_outputs(original_path, rewritten_path):
    before, after = op_kinds(original_path), op_kinds(rewritten_path)
    assert before.count("RFFT2D") == 2
    assert not {"RFFT2D", "CAST", "REDUCE_PROD"} & set(after)
    # each branch: 15 ops became MEAN, SUB, FULLY_CONNECTED, MUL, ADD
    assert len(before) - len(after) == 2 * (15 - 5)
    assert output_names(rewritten_path.read_bytes()) == ["Identity", EMBEDDING]


def test_rewritten_scores_real_audio_like_the_original(original_path, rewritten_path, windows):
    original = run(original_path, windows, 8)["Identity"]
    rewritten = run(rewritten_path, windows, 8)
    logits, embeddings = rewritten["Identity"], rewritten[EMBEDDING]
    assert logits.shape == original.shape == (len(windows), 6522)
    assert np.abs(logits - original).max() <= 1e-3
    np.testing.assert_array_equal(logits.argmax(axis=1), original.argmax(axis=1))
    assert embeddings.shape == (len(windows), 1024)
    assert np.isfinite(embeddings).all()


@pytest.mark.filterwarnings("ignore:.*experimental_preserve_all_tensors")
def test_embedding_output_is_the_original_global_avg_pool(original_path, rewritten_path, windows):
    window = windows[5:6]
    reference = Interpreter(
        model_path=str(original_path), num_threads=2, experimental_preserve_all_tensors=True
    )
    reference.allocate_tensors()
    reference.set_tensor(reference.get_input_details()[0]["index"], window)
    reference.invoke()
    pool = next(t for t in reference.get_tensor_details() if t["name"] == EMBEDDING)
    expected = reference.get_tensor(pool["index"])
    np.testing.assert_allclose(run(rewritten_path, window, 1)[EMBEDDING], expected, atol=1e-4)


def test_batch_of_8_equals_batch_of_1_row_by_row(rewritten_path, windows):
    batch = windows[:8]
    one, eight = run(rewritten_path, batch, 1), run(rewritten_path, batch, 8)
    for name in ("Identity", EMBEDDING):
        np.testing.assert_allclose(eight[name], one[name], atol=1e-5)


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage, not a model", b"\x00\x00\x00\x00TFL3" + bytes(range(256)) * 4],
    ids=["empty", "text", "identifier-then-noise"],
)
def test_garbage_is_refused(data):
    with pytest.raises(ModelArtifactError):
        rewrite_birdnet(data)


def test_other_tflite_model_is_refused(original_path):
    location_model = original_path.with_name(BIRDNET_META.name)
    with pytest.raises(ModelArtifactError, match="RFFT2D"):
        rewrite_birdnet(location_model.read_bytes())
