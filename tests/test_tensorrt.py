"""The TensorRT engine's parts that need no GPU: plan cache keys, plan sidecar checks, config,
the missing-runtime line (in-process, in a worker, from `birdd engines build`), and the INT8
calibration set read from real recordings.

Nothing here runs TensorRT and nothing pretends to: this machine has no GPU and no tensorrt.
The TensorRT calls themselves (runtime/trt_model.py, runtime/trt_build.py) are unverified until
they run on a GPU (docs/models.md says so).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr
from birdd_testing import RATE, THRUSH, read_mono, recording, run_birdd
from pydantic import TypeAdapter, ValidationError

from birdd.engines.errors import EngineError, ModelArtifactError, RuntimeMissingError
from birdd.engines.models.artifact import load_artifact, sidecar_path, write_sidecar
from birdd.engines.models.labels import Species
from birdd.engines.models.modeldir import write_manifest
from birdd.engines.models.plans import (
    DeviceInfo,
    build_command,
    calibration_cache_path,
    calibration_windows,
    check_plan,
    device_slug,
    plan_block,
    plan_mismatch,
    plan_path,
    read_plan_block,
    write_plan_sidecar,
)
from birdd.engines.registry import create_engine, engine_config_type, resolve_any
from birdd.engines.tensorrt import (
    TensorRTConfig,
    TensorRTEngine,
    TensorRTWorkerEngine,
    ensure_plan,
)

WINDOW = 144000
ORIN = DeviceInfo("Orin Nano", "8.7", "10.3.0")
MISSING = (
    r"TensorRT is not installed for .*: pip install 'birdd\[tensorrt\]' \(on a Jetson: the "
    r"JetPack's python3-libnvinfer and pycuda; or engine\.python: /usr/bin/python3\)"
)


def tensorrt_absent() -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return
    pytest.skip("tensorrt is installed here: these checks are for a machine without it")


@pytest.fixture
def onnx_artifact(tmp_path):
    """A small ONNX-format artifact (bytes that are no model: nothing here parses them)."""
    model = tmp_path / "BirdNET_GLOBAL_6K_V2.4_Model_FP32_opset17.onnx"
    model.write_bytes(b"not an onnx graph, only its sidecar matters here" * 10)
    species = [
        Species("Strix aluco", "Tawny Owl", "tawowl1", True),
        Species("Junco hyemalis", "Dark-eyed Junco", "daejun", True),
    ]
    meta = {
        "name": "BirdNET_GLOBAL_6K_V2.4",
        "version": "2.4",
        "format": "onnx",
        "kind": "classifier",
        "activation": "sigmoid",
        "sample_rate": 48000,
        "window_samples": WINDOW,
        "input_name": "INPUT",
        "outputs": {"scores": "Identity", "embeddings": "model/GLOBAL_AVG_POOL/Mean"},
        "licence": "CC BY-NC-SA 4.0",
    }
    write_sidecar(model, meta, species)
    return load_artifact(model)


def write_plan(artifact, device=ORIN, precision="fp16", max_batch=8):
    plan = plan_path(artifact.path, device.name, device.trt_version, precision)
    plan.write_bytes(b"serialized engine bytes")
    write_plan_sidecar(plan, artifact, plan_block(device, precision, max_batch, artifact))
    return plan


# -- plan cache keys ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("Orin Nano", "orin-nano"),
        ("NVIDIA GeForce RTX 3090", "geforce-rtx-3090"),
        ("NVIDIA Tegra X2", "tegra-x2"),
        ("Orin (nvgpu)", "orin-nvgpu"),
        ("NVIDIA H100 80GB HBM3", "h100-80gb-hbm3"),
        ("???", "gpu"),
    ],
)
def test_device_slug(name, slug):
    assert device_slug(name) == slug


def test_plan_path_is_keyed_by_gpu_version_and_precision(tmp_path):
    onnx = tmp_path / "BirdNET_GLOBAL_6K_V2.4_Model_FP32_opset17.onnx"
    plan = plan_path(onnx, "Orin Nano", "10.3.0", "fp16")
    assert (
        plan == tmp_path / "BirdNET_GLOBAL_6K_V2.4_Model_FP32_opset17.orin-nano.trt10.3.0.fp16.plan"
    )
    tx2 = plan_path(onnx, "NVIDIA Tegra X2", "8.2.1.8", "fp32")
    assert tx2.name == "BirdNET_GLOBAL_6K_V2.4_Model_FP32_opset17.tegra-x2.trt8.2.1.8.fp32.plan"
    keys = {
        plan_path(onnx, gpu, version, precision)
        for gpu in ("Orin Nano", "NVIDIA Tegra X2")
        for version in ("8.2.1", "10.3.0")
        for precision in ("fp16", "fp32", "int8")
    }
    assert len(keys) == 12
    assert sidecar_path(plan).name.endswith(".trt10.3.0.fp16.json")
    with pytest.raises(EngineError, match="precision 'bf16'"):
        plan_path(onnx, "Orin Nano", "10.3.0", "bf16")


def test_calibration_cache_is_per_plan_and_calibration_set(tmp_path):
    plan = plan_path(tmp_path / "m.onnx", "Orin Nano", "10.3.0", "int8")
    assert calibration_cache_path(plan, "abc").name == "m.orin-nano.trt10.3.0.int8.calib-abc"
    assert calibration_cache_path(plan, "abc") != calibration_cache_path(plan, "def")


def test_build_command_names_precision_calibration_and_batch(tmp_path):
    onnx = tmp_path / "m.onnx"
    assert build_command(onnx, "fp16", 8) == f"birdd engines build {onnx} --fp16"
    assert build_command(onnx, "int8", 16, "/data/site") == (
        f"birdd engines build {onnx} --int8 --calib /data/site --batch 16"
    )


# -- plan sidecars --------------------------------------------------------------------------


def test_a_plan_sidecar_is_a_model_artifact_of_its_own(onnx_artifact):
    plan = write_plan(onnx_artifact)
    artifact = load_artifact(plan)  # hashes the plan file itself
    assert artifact.format == "tensorrt"
    assert artifact.species == onnx_artifact.species
    assert (artifact.sample_rate, artifact.window_samples) == (48000, WINDOW)
    assert artifact.outputs == onnx_artifact.outputs
    block = read_plan_block(plan)
    assert block["device"] == "Orin Nano" and block["version"] == "10.3.0"
    assert block["precision"] == "fp16" and block["max_batch"] == 8
    assert block["source"] == onnx_artifact.path.name
    assert block["source_sha256"] == onnx_artifact.sha256
    assert plan_mismatch(block, ORIN, "fp16", 8, onnx_artifact.sha256) is None


@pytest.mark.parametrize(
    ("here", "precision", "batch", "words"),
    [
        (
            DeviceInfo("NVIDIA Tegra X2", "6.2", "10.3.0"),
            "fp16",
            1,
            ["built for GPU 'Orin Nano' and this is 'NVIDIA Tegra X2'", "--fp16'"],
        ),
        (
            DeviceInfo("Orin Nano", "8.7", "8.6.2"),
            "fp16",
            1,
            ["built with TensorRT 10.3.0 and this is TensorRT 8.6.2", "--fp16'"],
        ),
        (ORIN, "fp32", 1, ["it is fp16 and engine.precision is fp32", "--fp32'"]),
        (ORIN, "int8", 1, ["engine.precision is int8", "--int8 --calib /site'"]),
        (ORIN, "fp16", 16, ["at most 8 windows per batch and batch_size is 16", "--batch 16'"]),
    ],
)
def test_a_plan_from_elsewhere_is_refused_with_the_command_to_run(
    onnx_artifact, here, precision, batch, words
):
    plan = write_plan(onnx_artifact)
    with pytest.raises(ModelArtifactError) as refused:
        check_plan(plan, read_plan_block(plan), here, precision, batch, "/site")
    message = str(refused.value)
    assert "\n" not in message
    assert f"run 'birdd engines build {onnx_artifact.path} --" in message
    for word in words:
        assert word in message, message


def test_the_engine_checks_a_plan_named_in_the_config(onnx_artifact):
    plan = load_artifact(write_plan(onnx_artifact))
    config = TensorRTConfig(model=str(plan.path), batch_size=2)
    assert ensure_plan(plan, config, ORIN, build=refuse_to_build) == plan.path
    tx2 = DeviceInfo("NVIDIA Tegra X2", "6.2", "8.2.1")
    with pytest.raises(ModelArtifactError, match=r"built for GPU 'Orin Nano'.*birdd engines build"):
        ensure_plan(plan, config, tx2, build=refuse_to_build)


def test_a_sidecar_without_a_tensorrt_block_is_one_line(onnx_artifact, tmp_path):
    plan = tmp_path / "other.plan"
    plan.write_bytes(b"bytes")
    meta = json.loads(sidecar_path(onnx_artifact.path).read_text())
    meta["format"] = "tensorrt"
    write_sidecar(plan, meta, onnx_artifact.species)
    with pytest.raises(ModelArtifactError, match=r"has no tensorrt block.*birdd engines build"):
        read_plan_block(plan)


def refuse_to_build(request, windows):
    raise AssertionError(f"no plan should be built here: {request}")


class RecordingBuilder:
    """Stands in for the TensorRT builder to check the cache rules only: it writes bytes where
    the plan goes and says which GPU it is. It does not pretend to be TensorRT."""

    def __init__(self, device=ORIN):
        self.device = device
        self.requests = []

    def __call__(self, request, windows):
        self.requests.append(request)
        Path(request["out"]).write_bytes(f"plan {len(self.requests)}".encode())
        return {
            "device": self.device.name,
            "compute_capability": self.device.compute_capability,
            "trt_version": self.device.trt_version,
        }


def test_the_plan_cache_builds_once_and_rebuilds_when_the_onnx_changes(onnx_artifact):
    builder = RecordingBuilder()
    config = TensorRTConfig(model=str(onnx_artifact.path), batch_size=2)
    plan = ensure_plan(onnx_artifact, config, ORIN, builder)
    assert plan == plan_path(onnx_artifact.path, "Orin Nano", "10.3.0", "fp16")
    assert load_artifact(plan).format == "tensorrt" and not list(plan.parent.glob("*.partial"))
    request = builder.requests[0]
    assert (request["max_batch"], request["opt_batch"], request["precision"]) == (8, 2, "fp16")
    assert ensure_plan(onnx_artifact, config, ORIN, builder) == plan and len(builder.requests) == 1
    bigger = TensorRTConfig(model=str(onnx_artifact.path), batch_size=16)
    ensure_plan(onnx_artifact, bigger, ORIN, builder)
    assert builder.requests[-1]["max_batch"] == 16
    onnx_artifact.path.write_bytes(b"a retrained model")
    meta = json.loads(sidecar_path(onnx_artifact.path).read_text())
    write_sidecar(onnx_artifact.path, meta, onnx_artifact.species)
    ensure_plan(load_artifact(onnx_artifact.path), bigger, ORIN, builder)
    assert len(builder.requests) == 3
    other = DeviceInfo("NVIDIA GeForce RTX 3090", "8.6", "10.3.0")
    assert ensure_plan(load_artifact(onnx_artifact.path), config, other, RecordingBuilder(other))
    assert len(list(onnx_artifact.path.parent.glob("*.plan"))) == 2


def test_a_failed_build_leaves_no_plan(onnx_artifact):
    def failing(request, windows):
        Path(request["out"]).write_bytes(b"half a plan")
        raise EngineError("TensorRT could not build a plan: out of memory")

    config = TensorRTConfig(model=str(onnx_artifact.path))
    with pytest.raises(EngineError, match="out of memory"):
        ensure_plan(onnx_artifact, config, ORIN, failing)
    assert not list(onnx_artifact.path.parent.glob("*.plan*"))


# -- config ---------------------------------------------------------------------------------


def test_config_defaults_and_validation():
    config = TensorRTConfig()
    assert (config.precision, config.device, config.workspace_mb) == ("fp16", 0, 1024)
    assert TensorRTConfig(precision="int8", calibration="/data/site").calibration == "/data/site"
    with pytest.raises(ValidationError, match=r"precision int8 needs engine\.calibration"):
        TensorRTConfig(precision="int8")
    with pytest.raises(ValidationError, match="precision"):
        TensorRTConfig(precision="bf16")
    with pytest.raises(ValidationError, match="threads"):
        TensorRTConfig(threads=2)


def test_the_config_union_knows_tensorrt_and_plan_files():
    adapter = TypeAdapter(engine_config_type())
    for section in ({"type": "tensorrt"}, {"model": "/models/m.plan"}, {"model": "x.engine"}):
        assert isinstance(adapter.validate_python(section), TensorRTConfig), section
    assert adapter.validate_python({"model": "m.onnx"}).type == "onnx"


def test_an_installed_model_name_falls_back_to_its_onnx_file(tmp_path, monkeypatch):
    monkeypatch.setenv("BIRDD_DATA_DIR", str(tmp_path))
    folder = tmp_path / "models" / "birdnet"
    folder.mkdir(parents=True)
    write_manifest(folder, {"classifier": {"tflite": "m.tflite", "onnx": "m.onnx"}})
    assert resolve_any("birdnet", TensorRTEngine.model_formats) == folder / "m.onnx"
    write_manifest(folder, {"classifier": {"tensorrt": "m.plan", "onnx": "m.onnx"}})
    assert resolve_any("birdnet", TensorRTEngine.model_formats) == folder / "m.plan"
    write_manifest(folder, {"classifier": {"tflite": "m.tflite"}})
    with pytest.raises(ModelArtifactError, match="has no onnx file"):
        resolve_any("birdnet", TensorRTEngine.model_formats)


# -- the missing runtime --------------------------------------------------------------------


def test_a_missing_runtime_is_one_line_in_process(onnx_artifact):
    tensorrt_absent()
    with pytest.raises(RuntimeMissingError, match=MISSING) as missing:
        create_engine(TensorRTConfig(model=str(onnx_artifact.path)))
    assert "\n" not in str(missing.value)
    with pytest.raises(RuntimeMissingError, match=MISSING):
        TensorRTEngine.probe()


@pytest.mark.system  # starts an engine worker process
def test_a_missing_runtime_in_the_worker_names_its_interpreter(onnx_artifact):
    tensorrt_absent()
    engine = TensorRTWorkerEngine(
        TensorRTConfig(model=str(onnx_artifact.path)), onnx_artifact, python=sys.executable
    )
    with pytest.raises(RuntimeMissingError, match=MISSING) as missing:
        engine.load()
    assert sys.executable in str(missing.value) and "\n" not in str(missing.value)
    assert engine.pid is None
    with pytest.raises(RuntimeMissingError, match=MISSING):  # engine.python: the same worker
        create_engine(TensorRTConfig(model=str(onnx_artifact.path), python=sys.executable))


@pytest.mark.system  # starts birdd in a fresh process
def test_birdd_engines_lists_tensorrt_as_missing_here():
    tensorrt_absent()
    result = run_birdd("engines")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert lines["tensorrt"].split()[1] == "missing"
    assert "pip install 'birdd[tensorrt]'" in lines["tensorrt"]
    assert run_birdd("engines", "list").stdout == result.stdout


@pytest.mark.system  # starts birdd in a fresh process
def test_birdd_engines_build_without_tensorrt_is_one_line_and_writes_nothing(onnx_artifact):
    tensorrt_absent()
    folder = onnx_artifact.path.parent
    before = sorted(folder.iterdir())
    result = run_birdd("engines", "build", str(onnx_artifact.path), "--fp16")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'birdd[tensorrt]'" in lines[0], result.stderr
    assert result.stdout == ""
    assert sorted(folder.iterdir()) == before


@pytest.mark.system  # starts birdd in a fresh process
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--int8"], "--int8 needs --calib DIR"),
        (["--fp16", "--calib", "/tmp"], "--calib is for --int8 only"),
        (["--batch", "0"], "--batch 0: Input should be greater than or equal to 1"),
    ],
)
def test_birdd_engines_build_refuses_bad_flags_in_one_line(onnx_artifact, flags, message):
    result = run_birdd("engines", "build", str(onnx_artifact.path), *flags)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"birdd: error: {message}"), result.stderr


# -- the INT8 calibration set, from real recordings -----------------------------------------


JURA = "maad_jura_S4A03895_20190522_060000.wav"  # 10 s at 22 kHz
WHALE = "negatives/humpback_whale.ogg"  # 65 s at 44.1 kHz
AUDIOMOTH = "pykanto_audiomoth_20210502_040000.wav"  # 0.98 s at 48 kHz


@pytest.fixture
def thrush_stereo() -> np.ndarray:
    """15 s of the thrush at 48 kHz in channel 0, the same 1 s later in channel 1."""
    thrush = read_mono(recording(THRUSH))[: 16 * RATE]
    return np.stack([thrush[RATE:], thrush[:-RATE]], axis=1)


@pytest.fixture
def site(tmp_path, thrush_stereo):
    folder = tmp_path / "site"
    (folder / "night").mkdir(parents=True)
    (folder / "dawn_jura.wav").symlink_to(recording(JURA))
    soundfile.write(str(folder / "thrush_stereo.wav"), thrush_stereo, RATE, subtype="FLOAT")
    for name in (WHALE, AUDIOMOTH):
        (folder / "night" / Path(name).name).symlink_to(recording(name))
    (folder / "notes.txt").write_text("not audio")
    (folder / "broken.wav").write_bytes(b"RIFF" + b"\x00" * 100)
    return folder


def test_calibration_windows_come_from_every_recording_at_the_model_rate(
    site, thrush_stereo, caplog
):
    windows = calibration_windows(site, 48000, WINDOW, max_windows=64)
    assert windows.dtype == np.float32 and windows.shape[1] == WINDOW
    assert np.isfinite(windows).all()
    assert "skipping" in caplog.text and "broken.wav" in caplog.text
    # 5 recordings share 64 windows (13 each at most), in file order: the 10 s Jura dawn
    # (22 kHz) 3, the 65 s whale (44.1 kHz) 13, the 1 s AudioMoth file 1 (zero-padded), the
    # 15 s stereo thrush 5
    assert len(windows) == 3 + 13 + 1 + 5
    for index, name in ((0, JURA), (3, WHALE)):  # each window resampled from its own samples
        audio, rate = soundfile.read(str(recording(name)), dtype="float32")
        expected = soxr.resample(audio[: WINDOW * rate // 48000], rate, 48000)[:WINDOW]
        np.testing.assert_allclose(windows[index], expected, atol=1e-5)
    short, _ = soundfile.read(str(recording(AUDIOMOTH)), dtype="float32")
    padded = windows[16]
    np.testing.assert_array_equal(padded[: len(short)], short)
    assert not padded[len(short) :].any()
    mixed = thrush_stereo.mean(axis=1)  # stereo mixed
    np.testing.assert_allclose(np.concatenate(windows[-5:]), mixed[: 5 * WINDOW], atol=1e-6)


def test_calibration_windows_are_capped_and_spread(site):
    windows = calibration_windows(site, 48000, WINDOW, max_windows=6)
    assert len(windows) == 6
    assert len({w.tobytes() for w in windows}) == 6


def test_calibration_folder_refusals(tmp_path):
    with pytest.raises(EngineError, match="does not exist"):
        calibration_windows(tmp_path / "nowhere", 48000, WINDOW)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngineError, match=r"has no recordings.*wav, flac"):
        calibration_windows(tmp_path / "empty", 48000, WINDOW)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.wav").write_bytes(b"RIFFjunk")
    with pytest.raises(EngineError, match="none of its 1 files is readable"):
        calibration_windows(tmp_path / "bad", 48000, WINDOW)
