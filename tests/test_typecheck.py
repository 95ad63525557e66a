"""The type checker over the runtime code: mypy on daemon/ and engines/ as the ``birdd.*``
packages they install as (settings in pyproject.toml's [tool.mypy]).

The folders are mapped to ``birdd.daemon`` / ``birdd.engines`` by setup.cfg's ``package_dir``;
mypy cannot read that mapping, so it checks a tree of symlinks that has the installed shape.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system  # mypy over the whole tree in a fresh process (about 30 s)

REPO = Path(__file__).resolve().parent.parent
CHECKED = ("daemon", "engines")


def test_mypy_passes_on_daemon_and_engines(tmp_path: Path) -> None:
    if shutil.which("mypy") is None and not (Path(sys.executable).parent / "mypy").exists():
        pytest.fail("mypy is not installed: bash tests/install.sh installs the dev extra")
    package = tmp_path / "birdd"
    package.mkdir()
    for folder in CHECKED:
        (package / folder).symlink_to(REPO / folder, target_is_directory=True)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(REPO / "pyproject.toml"),
            "--cache-dir",
            str(tmp_path / "cache"),
            *[arg for folder in CHECKED for arg in ("-p", f"birdd.{folder}")],
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
