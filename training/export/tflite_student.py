"""A trained student → ``student_tflite.tflite`` (FP32) and ``student_tflite_int8.tflite``,
each with its sidecar, built by ``tflite_build.py`` in the TensorFlow conversion virtualenv.

The torch side writes the layers (a small JSON) and their arrays (an .npz, batch norm folded
into each convolution) to a temporary folder; the script rebuilds the network from TF ops and
converts it with ``tf.lite.TFLiteConverter``. Nothing of TensorFlow is imported here.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from birdd.engines.errors import EngineError
from birdd.engines.models.artifact import write_sidecar
from birdd.engines.models.convert import converter_venv, ensure_converter_env
from birdd.engines.models.labels import Species
from birdd.training.export.student import sidecar_meta
from birdd.training.models.student import Student
from birdd.training.verify import Parity, open_engine

SCRIPT = Path(__file__).with_name("tflite_build.py")
# Not student.tflite: a sidecar is <stem>.json, and student.onnx owns student.json.
FP32_FILE, INT8_FILE = "student_tflite.tflite", "student_tflite_int8.tflite"
BUILT = {"student.tflite": FP32_FILE, "student_int8.tflite": INT8_FILE}
TFLITE_MODES = ("auto", "yes", "no")

log = logging.getLogger("birdd.training")


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().astype(np.float32)


def fold_batch_norm(block: nn.Sequential) -> Tuple[np.ndarray, np.ndarray]:
    """``Conv2d(bias=False)`` then ``BatchNorm2d`` (eval) as one convolution's weight and bias."""
    conv, norm = block[0], block[1]
    scale = _array(norm.weight) / np.sqrt(_array(norm.running_var) + norm.eps)
    weight = _array(conv.weight) * scale[:, None, None, None]
    return weight, _array(norm.bias) - _array(norm.running_mean) * scale


def student_arrays(model: Student, samples: int) -> Tuple[Dict, Dict[str, np.ndarray]]:
    """The network as ``tflite_build.py`` reads it: a layer list and the arrays it names."""
    frontend = model.frontend
    arrays = {
        "dft": _array(frontend.dft)[:, 0, :],
        "mel": _array(frontend.mel)[:, :, 0],
        "classifier_weight": _array(model.classifier.weight),
        "classifier_bias": _array(model.classifier.bias),
    }
    if frontend.params.decimate > 1:
        arrays["lowpass"] = _array(frontend.lowpass)[0, 0]
    norm_scale, norm_shift = fold_norm(model.norm)
    arrays.update(norm_scale=norm_scale, norm_shift=norm_shift)
    convs = [("conv", model.stem)]
    for block in model.blocks:
        convs += [("depthwise", block.depthwise), ("pointwise", block.pointwise)]
    layers = []
    for index, (kind, block) in enumerate(convs):
        arrays[f"w{index}"], arrays[f"b{index}"] = fold_batch_norm(block)
        stride = block[0].stride[0]
        layers.append({"type": kind, "stride": stride, "weight": f"w{index}", "bias": f"b{index}"})
    params = frontend.params
    spec = {
        "samples": samples,
        "frontend": {
            "decimate": params.decimate, "hop": params.hop, "bins": frontend.bins,
            "log_floor": params.log_floor,
        },
        "layers": layers,
    }  # fmt: skip
    return spec, arrays


def fold_norm(norm: nn.BatchNorm2d) -> Tuple[np.ndarray, np.ndarray]:
    """The one-channel batch norm on the log-mel as a scale and a shift (eval)."""
    scale = _array(norm.weight) / np.sqrt(_array(norm.running_var) + norm.eps)
    return scale, _array(norm.bias) - _array(norm.running_mean) * scale


def converter_python(create: bool, log: Callable[[str], None] = print) -> Optional[Path]:
    """The conversion virtualenv's Python; None when it is absent and ``create`` is False."""
    python = converter_venv() / "bin" / "python"
    if not create and not python.is_file():
        return None
    return ensure_converter_env(log)


def build(python: Path, work: Path) -> Dict[str, Dict]:
    """Run ``tflite_build.py`` on ``work``; its report of the files it wrote."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [str(python), str(SCRIPT), str(work)], capture_output=True, text=True, env=env,
        errors="replace", check=False,
    )  # fmt: skip
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()] or ["no output"]
        raise EngineError(f"tflite_build.py failed (exit {result.returncode}): {lines[-1]}")
    return json.loads((work / "built.json").read_text(encoding="utf-8"))


def export_tflite(
    model: Student, out: Path, species: List[Species], name: str, samples: int, extra: Dict,
    python: Path, calibration: Optional[np.ndarray] = None,
) -> List[Path]:  # fmt: skip
    """``FP32_FILE`` (and ``INT8_FILE`` given calibration windows) in ``out``."""
    model.eval()
    spec, arrays = student_arrays(model, samples)
    written = []
    with tempfile.TemporaryDirectory(prefix=".tflite-", dir=out) as tmp:
        work = Path(tmp)
        (work / "student.json").write_text(json.dumps(spec), encoding="utf-8")
        np.savez(work / "student.npz", **arrays)  # type: ignore[arg-type]
        if calibration is not None:
            np.save(work / "calibration.npy", calibration.astype(np.float32))
        for file, info in build(python, work).items():
            target = out / BUILT[file]
            shutil.move(str(work / file), target)
            suffix = "_int8" if target.name == INT8_FILE else ""
            meta = sidecar_meta(model, f"{name}{suffix}", samples, extra)
            meta.update(format="tflite", outputs={"scores": info["output"]})
            write_sidecar(target, meta, species)
            written.append(target)
    return written


def engine_scores(path: Path, windows: np.ndarray) -> np.ndarray:
    """``windows`` scored by the birdd TFLite engine, as ``birdd --simulate --model`` loads it."""
    engine = open_engine("tflite", str(path))
    try:
        batch = engine.input_spec.max_batch
        return np.concatenate(
            [engine.predict(windows[i : i + batch]) for i in range(0, len(windows), batch)]
        )
    finally:
        engine.close()


def parity(path: Path, windows: np.ndarray, expected: np.ndarray) -> Parity:
    scores = engine_scores(path, windows)
    return Parity(path.name, "tflite", len(windows), float(np.abs(scores - expected).max()))


def try_export_tflite(
    model: Student, out: Path, species: List[Species], name: str, samples: int, extra: Dict,
    calibration: np.ndarray, mode: str,
) -> List[Path]:  # fmt: skip
    """The TFLite files as ``--tflite`` asks: ``no`` none; ``auto`` where the conversion
    virtualenv exists, a one-line warning where it does not or the build fails; ``yes``
    creates the virtualenv if needed and lets a failure end the run."""
    if mode == "no":
        return []
    try:
        python = converter_python(create=mode == "yes", log=log.info)
        if python is None:
            log.warning(
                "TFLite export skipped: no TensorFlow conversion environment at %s "
                "(--tflite yes creates it, ~1.6 GB, once)", converter_venv(),
            )  # fmt: skip
            return []
        return export_tflite(model, out, species, name, samples, extra, python, calibration)
    except EngineError as exc:
        if mode == "yes":
            raise
        log.warning("TFLite export skipped: %s", exc)
        return []
