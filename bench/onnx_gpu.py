"""The ``onnx-gpu`` extra checked in a throwaway venv: ``onnxruntime-gpu`` installs, birdd runs
``--simulate`` with providers [CUDAExecutionProvider, CPUExecutionProvider], and the detections
equal those of the CPU package (``onnxruntime``, this interpreter's) on the same recording.

``onnxruntime`` and ``onnxruntime-gpu`` both install the ``onnxruntime`` module, so they never
share an environment: the GPU package goes into a new venv (``python3.11 -m venv`` in a temporary
folder, removed afterwards unless ``--keep``) with birdd's base requirements and birdd itself
(editable, from this checkout). Without a GPU the engine must fall back to CPU in one log line
(``engines/runtime/onnx_session.py``), with none of ONNX Runtime's own lines left on stderr; with
one, the line says which providers ran. Where the wheel cannot be installed (no network, no
cached wheel) it says so and exits 0: skipped, not failed.

    python bench/onnx_gpu.py [--recording FILE] [--providers CUDAExecutionProvider,...] [--keep]

Slow (a 256 MB wheel, ~1-2 min): not part of the test suite.
"""

from __future__ import annotations

import argparse
import configparser
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Sequence, Tuple

from common import ROOT, clean_env, step

RECORDING = ROOT / "tests" / "data" / "audio" / "opensoundscape_1min_first30s.flac"
PACKAGE = "onnxruntime-gpu"
TOLERANCE = 2e-4  # GPU kernels may differ from CPU ones in the last digits
FALLBACK = "ONNX Runtime could not start"
NATIVE = (":onnxruntime:", "EP Error")  # ONNX Runtime's own lines, which must not reach stderr

Detection = Tuple[float, float, str, str, float]


def base_requirements() -> List[str]:
    """birdd's install_requires from setup.cfg (the venv gets these, not the extras)."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    lines = config["options"]["install_requires"].splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def pip(venv: Path, *args: str) -> subprocess.CompletedProcess:
    command = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def make_venv(folder: Path) -> Tuple[Path, float]:
    """The venv with onnxruntime-gpu, birdd's requirements and birdd; and the install time."""
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    started = time.perf_counter()
    installed = pip(venv, PACKAGE, *base_requirements())
    if installed.returncode != 0:
        reason = (installed.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"SKIPPED: cannot install {PACKAGE} here ({reason})")
        raise SystemExit(0)
    seconds = time.perf_counter() - started
    editable = pip(venv, "--no-deps", "-e", str(ROOT))
    if editable.returncode != 0:
        raise SystemExit(f"cannot install birdd into {venv}: {editable.stderr[-1500:]}")
    return venv, seconds


def site_size_mb(venv: Path, package: str) -> float:
    python = str(venv / "bin" / "python")
    code = f"import {package}, os; print(os.path.dirname({package}.__file__))"
    folder = Path(
        subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip()
    )
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def simulate(python: str, config: Path, recording: Path, db: Path) -> Tuple[List[Detection], str]:
    """Detections (offsets, species code, channel, confidence) and stderr of one run."""
    command = [python, "-m", "birdd.daemon", "--simulate", str(recording), "--config", str(config)]
    command += ["--db", str(db), "--format", "jsonl"]
    done = subprocess.run(command, capture_output=True, text=True, env=clean_env(), timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    found = [
        (
            r["offset_start"],
            r["offset_end"],
            str(r["species"]["code"]),
            str(r["channel"]),
            r["confidence"],
        )
        for r in rows
    ]
    return found, done.stderr


def same(cpu: Sequence[Detection], gpu: Sequence[Detection]) -> Tuple[bool, float]:
    """Equal detections (confidence within TOLERANCE); and the largest confidence difference."""
    if [d[:4] for d in cpu] != [d[:4] for d in gpu]:
        return False, float("inf")
    worst = max((abs(a[4] - b[4]) for a, b in zip(cpu, gpu)), default=0.0)
    return worst <= TOLERANCE, worst


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recording", type=Path, default=RECORDING)
    parser.add_argument(
        "--providers", default="CUDAExecutionProvider,CPUExecutionProvider", help="in order"
    )
    parser.add_argument("--keep", action="store_true", help="keep the venv (its path is printed)")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="birdd-onnx-gpu-"))
    try:
        providers = ", ".join(args.providers.split(","))
        config = folder / "onnx.yaml"
        config.write_text(f"engine:\n  type: onnx\n  providers: [{providers}]\n", encoding="utf-8")
        step(f"venv with {PACKAGE} in {folder}")
        venv, install_s = make_venv(folder)
        step(f"--simulate {args.recording.name}: CPU package, then {PACKAGE}")
        cpu, _ = simulate(sys.executable, config, args.recording, folder / "cpu.sqlite")
        gpu, errors = simulate(
            str(venv / "bin" / "python"), config, args.recording, folder / "g.sqlite"
        )
        ok, worst = same(cpu, gpu)
        fallback = [line for line in errors.splitlines() if FALLBACK in line]
        ran_on = [
            line for line in errors.splitlines() if " runs " in line and "ONNX Runtime" in line
        ]
        native = [line for line in errors.splitlines() if any(mark in line for mark in NATIVE)]
        print(
            f"{PACKAGE}: installed with its dependencies in {install_s:.0f} s; "
            f"onnxruntime package {site_size_mb(venv, 'onnxruntime'):.0f} MB"
        )
        print(f"providers configured: [{providers}]")
        print("fallback line: " + (fallback[0] if fallback else "none (every provider started)"))
        print("engine: " + (ran_on[0] if ran_on else "?"))
        print(f"ONNX Runtime's own lines left on stderr: {len(native)}")
        print(
            f"detections: CPU package {len(cpu)}, {PACKAGE} {len(gpu)}; same: "
            f"{'yes' if ok else 'NO'} (largest confidence difference {worst:.2g})"
        )
        if args.keep:
            print(f"venv kept: {venv}")
        return 0 if ok and not native and len(fallback) <= 1 else 1
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
