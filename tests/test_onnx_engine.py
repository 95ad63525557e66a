"""Every installed engine scores real BirdNET windows alike; the ONNX Runtime engine's refusals.

Needs BirdNET installed and converted to ONNX once (tests/install.sh does both; the conversion
takes minutes, so the suite never converts). A missing ONNX model fails, it does not skip.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from birdd_testing import (
    ENGINE_RECORDINGS,
    LOGIT_TOLERANCE,
    THRUSH,
    model_windows,
    recording,
    simulate_rows,
)
from pydantic import TypeAdapter, ValidationError

from birdd.engines.errors import EngineError, ModelArtifactError, RuntimeMissingError
from birdd.engines.models.artifact import load_artifact, sidecar_path, write_sidecar
from birdd.engines.models.modeldir import resolve_model
from birdd.engines.onnx import ONNXConfig
from birdd.engines.registry import create_engine, engine_classes, engine_config_type
from birdd.engines.tflite import TFLiteConfig

CONVERT = "python3 -m birdd.daemon models convert birdnet --to onnx"


@pytest.fixture(scope="module")
def onnx_model(birdnet_model):
    try:
        return resolve_model("birdnet", "onnx")
    except ModelArtifactError as exc:
        pytest.fail(f"BirdNET has no ONNX model ({exc}); run '{CONVERT}' once (tests/install.sh)")


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    """3 s windows from t = 0, the last partial one zero-padded: 10 + 1 + 4 windows."""
    return model_windows(*(recording(name) for name in ENGINE_RECORDINGS))


def config_for(engine_type: str, **fields):
    if engine_type == "tensorrt":
        fields.setdefault("precision", "fp32")  # the tolerance is an FP32 one
    return engine_classes()[engine_type].config_class(**fields)


def score(engine_type: str, windows: np.ndarray, method: str = "predict") -> np.ndarray:
    engine = create_engine(config_for(engine_type, batch_size=8))
    run = getattr(engine, method)
    return np.concatenate([run(windows[i : i + 8]) for i in range(0, len(windows), 8)])


@pytest.fixture(scope="module")
def reference(windows):
    """The fast TFLite model's logits and embeddings: what every engine must reproduce."""
    return score("tflite", windows), score("tflite", windows, "embed")


@pytest.mark.parametrize("engine_type", sorted(engine_classes()))
def test_every_engine_scores_real_windows_like_tflite(engine_type, windows, reference, onnx_model):
    """Every engine whose runtime is installed here (TensorRT only where there is a GPU)."""
    try:
        engine_classes()[engine_type].probe()
    except RuntimeMissingError as exc:
        pytest.skip(f"{engine_type} is not installed on this machine: {exc}")
    logits, embeddings = score(engine_type, windows), score(engine_type, windows, "embed")
    assert logits.shape == (len(windows), 6522) and embeddings.shape == (len(windows), 1024)
    np.testing.assert_array_equal(logits.argmax(axis=1), reference[0].argmax(axis=1))
    assert np.abs(logits - reference[0]).max() <= LOGIT_TOLERANCE
    np.testing.assert_allclose(embeddings, reference[1], atol=1e-3)
    species = load_artifact(resolve_model("birdnet", engine_type)).species
    top = [species[i].scientific for i in logits.argmax(axis=1)]
    assert top[2:7] == ["Hylocichla mustelina"] * 5  # the Wood Thrush at 6-21 s, 0.80 to 1.00
    assert top[10] == "Erithacus rubecula"  # the robin's 2.7 s, zero-padded: 0.996
    assert top[12] == "Phylloscopus collybita"  # the Jura chiffchaff at 3 s: 0.87


def test_dynamic_batch_rows_do_not_depend_on_the_batch(windows, onnx_model):
    engine = create_engine(ONNXConfig(batch_size=8))
    eight = engine.predict(windows[:8])
    one = np.concatenate([engine.predict(windows[i : i + 1]) for i in range(8)])
    np.testing.assert_allclose(eight, one, atol=1e-5)
    assert engine.predict(windows[:3]).shape == (3, 6522)
    with pytest.raises(EngineError, match="batch of 9 > batch_size 8"):
        engine.predict(windows[:9])


def test_a_corrupt_onnx_file_is_one_line(tmp_path, onnx_model):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"\x08\x07garbage, not a protobuf" * 100)
    meta = json.loads(sidecar_path(onnx_model).read_text())
    write_sidecar(model, meta, load_artifact(onnx_model).species)  # hash matches the garbage
    with pytest.raises(EngineError, match=r"cannot load ONNX model .*model\.onnx") as error:
        create_engine(ONNXConfig(model=str(model)))
    assert "\n" not in str(error.value)


def test_a_sidecar_with_the_wrong_window_is_refused(tmp_path, onnx_model):
    model = tmp_path / "model.onnx"
    model.symlink_to(onnx_model)
    meta = json.loads(sidecar_path(onnx_model).read_text())
    meta.update(window_samples=96000, sample_rate=32000, input_shape=[-1, 96000])
    sidecar_path(model).write_text(json.dumps(meta))
    with pytest.raises(EngineError, match=r"sidecar says one float \[B, 96000\] input"):
        create_engine(ONNXConfig(model=str(model)))


def test_an_unavailable_provider_falls_back_to_cpu_with_a_log_line(windows, caplog, onnx_model):
    import onnxruntime

    available = onnxruntime.get_available_providers()
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "ROCMExecutionProvider"]
    missing = [name for name in gpu if name not in available]
    assert missing, f"this check needs a provider ONNX Runtime lacks; it has {available}"
    with caplog.at_level(logging.INFO, logger="birdd.engines"):
        engine = create_engine(ONNXConfig(providers=missing, batch_size=1))
    assert engine.predict(windows[:1]).shape == (1, 6522)
    assert f"provider {missing[0]} is not available here" in caplog.text
    assert "using CPU" in caplog.text and "['CPUExecutionProvider']" in caplog.text


def test_provider_names_are_checked_in_the_config():
    with pytest.raises(ValidationError, match="end in ExecutionProvider"):
        ONNXConfig(providers=["CUDA"])
    assert ONNXConfig().providers == ["CPUExecutionProvider"]
    assert (ONNXConfig().threads, ONNXConfig().inter_op_threads) == (2, 1)


def test_a_missing_runtime_names_the_extra_to_install(monkeypatch, onnx_model):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises
    with pytest.raises(RuntimeMissingError, match=r"pip install 'birdd\[onnx\]'"):
        create_engine(ONNXConfig())


def test_an_engine_section_without_type_follows_the_model_suffix():
    """What ``--model PATH`` alone gives the config: ``{"model": PATH}``."""
    engine_section = TypeAdapter(engine_config_type())
    assert isinstance(engine_section.validate_python({"model": "x.tflite"}), TFLiteConfig)
    assert isinstance(engine_section.validate_python({"model": "birdnet"}), TFLiteConfig)
    assert isinstance(engine_section.validate_python({"model": "/m/x.onnx"}), ONNXConfig)
    onnx = engine_section.validate_python({"type": "onnx", "model": "x.onnx", "threads": 1})
    assert isinstance(onnx, ONNXConfig) and onnx.threads == 1
    with pytest.raises(ValidationError, match="runtime"):
        engine_section.validate_python({"type": "onnx", "runtime": "litert"})


def test_the_daemon_config_selects_the_onnx_engine():
    from birdd.daemon.config import build_config

    config = build_config({"engine": {"type": "onnx", "providers": ["CUDAExecutionProvider"]}})
    assert isinstance(config.engine, ONNXConfig)
    assert config.engine.for_mode(live=True).batch_size == 1


class FixedBatchSession:
    """The real session, declaring and insisting on a fixed batch of 4 (no `onnx` package here
    to write such a model)."""

    real_class = None

    def __init__(self, *args, **kwargs):
        self.real = self.real_class(*args, **kwargs)

    def get_inputs(self):
        real = self.real.get_inputs()[0]
        return [SimpleNamespace(name=real.name, shape=[4, real.shape[1]], type=real.type)]

    def run(self, names, feed):
        assert [len(value) for value in feed.values()] == [4]
        return self.real.run(names, feed)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_a_fixed_batch_model_is_padded_and_its_batch_enforced(monkeypatch, windows, onnx_model):
    import onnxruntime

    expected = create_engine(ONNXConfig(batch_size=4)).predict(windows[:3])
    monkeypatch.setattr(FixedBatchSession, "real_class", onnxruntime.InferenceSession)
    monkeypatch.setattr(onnxruntime, "InferenceSession", FixedBatchSession)
    found = create_engine(ONNXConfig(batch_size=4)).predict(windows[:3])
    np.testing.assert_allclose(found, expected, atol=1e-5)
    with pytest.raises(EngineError, match=r"fixed batch of 4: set engine\.batch_size to 4 or less"):
        create_engine(ONNXConfig(batch_size=8))


def test_engine_and_model_flags_override_the_config(tmp_path, onnx_model):
    """`--engine onnx` (the installed BirdNET resolves to its ONNX file) and `--model FILE`
    replace the config's engine: same detections as TFLite, the ONNX model in the run row."""

    def detections(*flags: str) -> list:
        db = tmp_path / f"{len(flags)}.db"
        result, rows = simulate_rows(recording(THRUSH), db, *flags)
        assert result.returncode == 0, result.stderr
        return [(row["offset_start"], row["species"]["code"], row["confidence"]) for row in rows]

    tflite = detections()
    by_type = detections("--engine", "onnx")
    by_file = detections("--engine", "onnx", "--model", str(onnx_model))
    assert len(tflite) == 16  # per window at 0.5
    for rows in (by_type, by_file):
        assert [row[:2] for row in rows] == [row[:2] for row in tflite]
        np.testing.assert_allclose([r[2] for r in rows], [r[2] for r in tflite], atol=1e-3)
    sha = load_artifact(onnx_model).sha256
    for name in ("2.db", "4.db"):
        models = sqlite3.connect(str(tmp_path / name)).execute("SELECT model_sha256 FROM runs")
        assert models.fetchall() == [(sha,)]
