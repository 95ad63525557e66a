"""Packaging traps from the design doc: mapped packages must all be listed, and runtime code
must stay importable on the Python 3.8 that JetPack 5 and Raspberry Pi OS ship."""

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAPPED = {
    "daemon": "birdd.daemon",
    "engines": "birdd.engines",
    "training": "birdd.training",
    "hub": "birdd.hub",
}


def listed_packages():
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    packages = set(parser["options"]["packages"].split())
    dirs = {}
    for line in parser["options"]["package_dir"].strip().splitlines():
        name, _, folder = (part.strip() for part in line.partition("="))
        dirs[name] = folder
    return packages, dirs


def test_every_package_folder_is_listed_and_mapped():
    packages, dirs = listed_packages()
    found = set()
    for folder, package in MAPPED.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder)
            found.add(".".join([package, *relative.parts]))
    assert found == packages
    for package in packages:
        assert (REPO / dirs[package] / "__init__.py").is_file(), package


def test_no_top_level_package_shadows_others():
    packages, _ = listed_packages()
    assert all(p.startswith("birdd.") for p in packages)
    assert not (REPO / "tests" / "__init__.py").exists()


@pytest.mark.system  # vermin over the whole tree, in a fresh process
def test_runtime_code_runs_on_python_38():
    vermin = shutil.which("vermin") or str(Path(sys.executable).parent / "vermin")
    result = subprocess.run(
        [
            vermin,
            "--target=3.8-",
            "--no-tips",
            "--violations",
            "--eval-annotations",
            "--backport",
            "typing_extensions",
            "daemon",
            "engines",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
