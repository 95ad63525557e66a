"""The engine side: which runtimes import here, the GPU, and the configured model (its
sidecar, its sha256, and one window of silence scored by the configured engine)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

from birdd.daemon.app.doctor.base import Context, Result, fail, ok, warn
from birdd.engines.base import EngineConfig
from birdd.engines.errors import EngineError, RuntimeMissingError
from birdd.engines.models.artifact import ModelArtifact, file_sha256, load_artifact
from birdd.engines.registry import create_engine, engine_classes, model_formats, resolve_any

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
L4T_RELEASE = re.compile(r"# R(\d+) \(release\), REVISION: ([\d.]+)")
"""Its first line: ``# R35 (release), REVISION: 4.1, GCID: …`` is L4T 35.4.1 (JetPack 5.1.2)."""
REINSTALL = (
    "reinstall it: birdd models install NAME --force, or copy the model and its sidecar again"
)


def split_fix(message: str, default_fix: str) -> List[str]:
    """birdd's one-line errors read ``problem: fix``; [problem, fix] (``default_fix`` when the
    message names none)."""
    problem, _, fix = message.rpartition(": ")
    if not problem or fix.count("(") != fix.count(")"):
        return [message, default_fix]
    return [problem, fix]


def engine_type(config: EngineConfig) -> str:
    """``type`` is each engine config's own literal, not a field of the base class."""
    return str(getattr(config, "type", ""))


def check_runtimes(ctx: Context) -> List[Result]:
    """One line per registered engine: its runtime and version here, or what to install. Only
    the configured engine's runtime is required."""
    configured = engine_type(ctx.config.engine) if ctx.config is not None else None
    results = []
    for name, engine in sorted(engine_classes().items()):
        mark = " (engine.type)" if name == configured else ""
        try:
            results.append(ok("runtime", f"{name}: {engine.probe()}{mark}"))
        except RuntimeMissingError as exc:
            problem, fix = split_fix(str(exc), "see 'birdd engines'")
            if name == configured:
                results.append(fail("runtime", f"{name}: {problem}{mark}", fix))
            else:
                results.append(
                    ok("runtime", f"{name}: not installed (only for engine.type {name})")
                )
    return results


def check_gpu(ctx: Context) -> List[Result]:
    """The GPU the CUDA and TensorRT engines would use, for information."""
    found = [line for line in (_nvidia_smi(), _tegra(), _device_nodes()) if line]
    if not found:
        return [ok("gpu", "none found (the CPU engines run here; tensorrt needs an NVIDIA GPU)")]
    return [ok("gpu", "; ".join(found))]


def _nvidia_smi() -> Optional[str]:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        answer = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    gpus = [line.split(" (UUID")[0] for line in answer.stdout.splitlines() if line.strip()]
    return ", ".join(gpus) if answer.returncode == 0 and gpus else None


def _tegra() -> Optional[str]:
    if not TEGRA_RELEASE.is_file():
        return None
    found = L4T_RELEASE.search(TEGRA_RELEASE.read_text(errors="replace"))
    return f"Jetson (L4T R{found[1]}.{found[2]})" if found else "Jetson"


def _device_nodes() -> Optional[str]:
    nodes = sorted(str(path) for path in Path("/dev").glob("nvidia[0-9]*"))
    return f"{', '.join(nodes)} present" if nodes else None


def check_model(ctx: Context) -> List[Result]:
    """The model file and sidecar, its sha256 against the sidecar's, and a load + one window."""
    assert ctx.config is not None
    engine_config = ctx.config.engine
    engine_class = engine_classes().get(engine_type(engine_config))
    if engine_class is None:  # the config validated it: only a vanished plugin gets here
        return [fail("model", f"no engine {engine_type(engine_config)!r}", "see 'birdd engines'")]
    try:
        artifact = load_artifact(
            resolve_any(engine_config.model, model_formats(engine_class)), verify_hash=False
        )
    except EngineError as exc:
        problem, fix = split_fix(str(exc), REINSTALL)
        return [fail("model", problem, fix)]
    described = (
        f"{artifact.name} {artifact.version} ({artifact.format}, {artifact.num_classes} "
        f"classes) at {artifact.path}"
    )
    hashed = _hash(artifact)
    results = [ok("model", described), hashed]
    if hashed.status == "ok":
        results.append(_load(ctx))
    return results


def _hash(artifact: ModelArtifact) -> Result:
    if not artifact.sha256:
        return warn("model sha256", "the sidecar records no sha256", REINSTALL)
    actual = file_sha256(artifact.path)
    if actual != artifact.sha256:
        return fail(
            "model sha256",
            f"{artifact.path.name} hashes to {actual[:12]}…, its sidecar says "
            f"{artifact.sha256[:12]}…: the file is damaged or was replaced",
            REINSTALL,
        )
    return ok("model sha256", f"{actual[:12]}… matches the sidecar")


def _load(ctx: Context) -> Result:
    """Load the model as ``birdd run`` would and score one window of digital silence."""
    assert ctx.config is not None
    config = ctx.config.engine.for_mode(live=True)
    started = time.monotonic()
    try:
        engine = create_engine(config)
        try:
            loaded = time.monotonic()
            batch = np.zeros((1, engine.input_spec.window_samples), dtype=np.float32)
            scores = engine.predict(batch)
        finally:
            engine.close()
    except EngineError as exc:
        problem, fix = split_fix(str(exc), "see 'birdd engines' and docs/models.md")
        return fail("model load", problem, fix)
    done = time.monotonic()
    return ok(
        "model load",
        f"{engine_type(config)} loads it in {loaded - started:.1f} s and scores a window "
        f"of silence ({scores.shape[1]} classes) in {(done - loaded) * 1000:.0f} ms",
    )
