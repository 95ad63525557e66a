"""Convert the installed BirdNET V2.4 to ONNX: tf2onnx in a throwaway virtualenv.

Why this route (docs/models.md, "BirdNET as ONNX"): tf2onnx fails on the original graph's RFFT2D
nodes (ONNX has no complex type) and tflite2onnx on REDUCE_MIN, but the graph rewritten by
``birdnet_rewrite`` (each framing + FFT + mel chain folded into one strided convolution, the
embedding as a second output) converts with tf2onnx's TFLite front end at opset 17 with a
dynamic batch, and ONNX Runtime then matches TFLite to about 1e-4 in the logits.

tf2onnx needs TensorFlow (about 1.6 GB installed), for this one-off step only, so it lives in a
virtualenv of its own under ``<data dir>/cache/convert-venv`` and runs as a subprocess; nothing
of it is imported here. The virtualenv is kept for the next conversion; delete it at will.
The result is checked with ONNX Runtime against the rewritten TFLite model before it is
registered in the model folder's manifest as ``classifier.onnx``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from birdd.engines.errors import EngineError, ModelArtifactError
from birdd.engines.models.artifact import ModelArtifact, load_artifact, sidecar_path, write_sidecar
from birdd.engines.models.birdnet_rewrite import rewrite_birdnet
from birdd.engines.models.install import BIRDNET_FAST, Log, fast_birdnet_meta
from birdd.engines.models.modeldir import data_dir, read_manifest, write_manifest
from birdd.engines.onnx import ONNXConfig, import_onnxruntime
from birdd.engines.registry import create_engine
from birdd.engines.tflite import TFLiteConfig

OPSET = 17
TF2ONNX = "tf2onnx==1.17.0"
# Tested together on Python 3.11 (x86_64); tf2onnx 1.17 and TensorFlow 2.21 need Python >= 3.10.
CONVERTER_REQUIREMENTS = [
    'tensorflow-cpu==2.21.0; platform_machine == "x86_64"',
    'tensorflow==2.21.0; platform_machine != "x86_64"',
    TF2ONNX,
    "onnx==1.23.2",
    "numpy==2.4.6",
    "protobuf==7.36.2",
]
# Its own stem: a sidecar is <stem>.json, and the two TFLite files already own theirs.
ONNX_NAME = f"BirdNET_GLOBAL_6K_V2.4_Model_FP32_opset{OPSET}.onnx"
TOLERANCE = 1e-3  # max |Δ| allowed between ONNX Runtime and TFLite, logits and embeddings


def converter_venv() -> Path:
    return data_dir() / "cache" / "convert-venv"


def _stream(command: List[str], log: Log, show: Callable[[str], Optional[str]], what: str) -> None:
    """Run ``command``, log what ``show`` makes of each output line, one-line error on failure."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    last = "no output"
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env=env,
    ) as process:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip()
            last = line.strip() or last
            shown = show(line)
            if shown:
                log(shown)
    if process.returncode != 0:
        raise EngineError(f"{what} failed (exit {process.returncode}): {last}")


def _pip_progress(line: str) -> Optional[str]:
    return line if line.startswith(("Collecting", "Installing", "Successfully")) else None


def _tf2onnx_progress(line: str) -> Optional[str]:
    """tf2onnx's own INFO/ERROR lines without their timestamp; TensorFlow's chatter is dropped."""
    if " - INFO - " not in line and " - ERROR - " not in line:
        return None
    message = line.split(" - ", 2)[-1].strip()
    return f"tf2onnx: {message}" if message else None


def ensure_converter_env(log: Log) -> Path:
    """The virtualenv's Python with ``CONVERTER_REQUIREMENTS`` installed, made on first use."""
    venv = converter_venv()
    python, stamp = venv / "bin" / "python", venv / "birdd-requirements.txt"
    wanted = "\n".join(CONVERTER_REQUIREMENTS) + "\n"
    if python.is_file() and stamp.is_file() and stamp.read_text(encoding="utf-8") == wanted:
        return python
    if sys.version_info < (3, 10):
        raise EngineError(
            "converting to ONNX needs Python >= 3.10 (TensorFlow 2.21, tf2onnx 1.17): convert "
            "on another machine and copy the .onnx file, its .json sidecar and manifest entry"
        )
    shutil.rmtree(venv, ignore_errors=True)
    log(f"creating the conversion environment {venv} (TensorFlow, ~1.6 GB, first time only)")
    venv_hint = "python -m venv (on Debian/Ubuntu: apt install python3-venv)"
    _stream([sys.executable, "-m", "venv", str(venv)], log, lambda line: None, venv_hint)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    pip += ["--progress-bar", "off", "--only-binary=:all:", *CONVERTER_REQUIREMENTS]
    _stream(pip, log, _pip_progress, "pip install of the converter")
    stamp.write_text(wanted, encoding="utf-8")
    return python


def _reference_tflite(folder: Path) -> ModelArtifact:
    """The original BirdNET model: the installed ``classifier_reference``, else the classifier."""
    manifest = read_manifest(folder)
    role = "classifier_reference" if "classifier_reference" in manifest else "classifier"
    name = manifest.get(role, {}).get("tflite")
    if name is None:
        raise ModelArtifactError(f"{folder} has no TFLite BirdNET model to convert: reinstall it")
    return load_artifact(folder / name)


def _sidecar_meta(model: Path, **changes: Any) -> Dict[str, Any]:
    """The descriptive sidecar fields of ``model`` (not those ``write_sidecar`` computes)."""
    meta = json.loads(sidecar_path(model).read_text(encoding="utf-8"))
    for key in ("schema", "file", "sha256", "classes"):
        meta.pop(key, None)
    meta.update(changes)
    return meta


def _write_rewritten(original: ModelArtifact, work: Path, log: Log) -> Path:
    """The rewritten graph, made afresh from the original: what tf2onnx converts.

    Rewrites written before empty constant buffers were kept (a shape-[0] reshape target read
    by tf2onnx as a graph input) cannot be converted, so the installed fast file is not used.
    """
    log(f"rewriting {original.path.name} (framing + RFFT + mel folded into strided convolutions)")
    rewritten = rewrite_birdnet(original.path.read_bytes())
    target = work / BIRDNET_FAST
    target.write_bytes(rewritten)
    write_sidecar(
        target, fast_birdnet_meta(_sidecar_meta(original.path), rewritten), original.species
    )
    return target


def run_tf2onnx(python: Path, tflite: Path, target: Path, log: Log) -> None:
    log(f"converting with {TF2ONNX} at opset {OPSET}")
    command = [str(python), "-m", "tf2onnx.convert", "--tflite", str(tflite)]
    command += ["--output", str(target), "--opset", str(OPSET)]
    _stream(command, log, _tf2onnx_progress, "tf2onnx")
    if not target.is_file():
        raise EngineError(f"tf2onnx reported success but wrote no {target.name}")


def probe_windows(samples: int) -> np.ndarray:
    """Seeded noise at three levels and a half-silent window (the zero-padded last window)."""
    rng = np.random.default_rng(17)
    windows = rng.standard_normal((4, samples)).astype(np.float32)
    windows *= np.array([[1e-3], [0.1], [1.0], [0.1]], np.float32)
    windows[3, samples // 2 :] = 0.0
    return windows


def check_parity(tflite: Path, onnx_model: Path, log: Log) -> Tuple[float, float]:
    """Max |Δlogit| and |Δembedding| between the two engines; refuse the ONNX file past 1e-3."""
    tflite_engine = create_engine(TFLiteConfig(model=str(tflite), batch_size=4))
    onnx_engine = create_engine(ONNXConfig(model=str(onnx_model), batch_size=4))
    windows = probe_windows(onnx_engine.input_spec.window_samples)
    differences = []
    for method in ("predict", "embed"):
        expected = getattr(tflite_engine, method)(windows)
        found = getattr(onnx_engine, method)(windows)
        differences.append(float(np.abs(found - expected).max()))
    logits, embeddings = differences
    if not max(differences) <= TOLERANCE:
        raise ModelArtifactError(
            f"the ONNX model disagrees with TFLite (max |Δlogit| {logits:.2g}, |Δembedding| "
            f"{embeddings:.2g} > {TOLERANCE}): not installing it"
        )
    log(f"ONNX Runtime matches TFLite: max |Δlogit| {logits:.1e}, |Δembedding| {embeddings:.1e}")
    return logits, embeddings


def convert_birdnet_to_onnx(folder: Path, log: Log = print, force: bool = False) -> Path:
    """Convert the BirdNET installed in ``folder`` to ONNX; register and return the .onnx file."""
    manifest = read_manifest(folder)
    existing = manifest.get("classifier", {}).get("onnx")
    if existing and (folder / existing).is_file() and not force:
        log(f"{folder / existing} exists (use --force to convert again)")
        return folder / existing
    import_onnxruntime()  # checking the result needs it: fail before the long part
    original = _reference_tflite(folder)
    python = ensure_converter_env(log)
    with tempfile.TemporaryDirectory(prefix=".convert-", dir=folder) as tmp:
        work = Path(tmp)
        tflite = _write_rewritten(original, work, log)
        target = work / ONNX_NAME
        run_tf2onnx(python, tflite, target, log)
        note = f"converted from {BIRDNET_FAST} ({original.source}) with {TF2ONNX}, opset {OPSET}"
        write_sidecar(target, _sidecar_meta(tflite, format="onnx", source=note), original.species)
        check_parity(tflite, target, log)
        for path in (target, sidecar_path(target)):
            os.replace(path, folder / path.name)
    manifest = read_manifest(folder)  # read again: the conversion took minutes
    manifest.setdefault("classifier", {})["onnx"] = ONNX_NAME
    write_manifest(folder, manifest)
    log(f"registered {ONNX_NAME} as the ONNX classifier of {folder.name} (engine.type: onnx)")
    return folder / ONNX_NAME
