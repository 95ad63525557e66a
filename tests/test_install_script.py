"""deploy/install.sh, the one-command installer, run for real in a throwaway root (`--root`).

What runs for real: the script itself, python3 -m venv with Debian's /usr/bin/python3, pip
installing this checkout with its extras (from the package index pip is configured with, as
on a station), `systemd-sysusers --root` creating the user in the root's copy of this machine's
/etc/passwd, birdd's own `models install birdnet` as that user, `systemctl --root enable`, and
the installed birdd simulating a repository recording as that user. What --root leaves out:
apt-get (the Debian packages are only checked on this machine) and starting the unit (systemd
is not PID 1 here; docs/deployment.md lists what was not testable). One install and a second
run cost about 20 s; the tests below share them and run in file order, uninstall last.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, List, NamedTuple

import pytest
from birdd_testing import jsonl_rows, recording, run_birdd, simulate_args

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "deploy" / "install.sh"
SHIPPED_UNIT = REPO / "deploy" / "systemd" / "birdd.service"
HOST_FILES = ("passwd", "group", "shadow", "gshadow", "os-release")
TOOLS = ("systemd-sysusers", "systemctl", "setpriv", "userdel")


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def make_root(host_etc: bool = True) -> Path:
    """A world-traversable temporary root (the birdd user must reach its venv and data) with a
    copy of this machine's user database and os-release, as a fresh Debian system has them."""
    if os.geteuid() != 0:
        pytest.skip("the installer creates a user and chowns its data: run the tests as root")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt install systemd util-linux passwd)")
    root = Path(tempfile.mkdtemp(prefix="birdd-root-"))
    root.chmod(0o755)
    (root / "etc").mkdir()
    for name in HOST_FILES if host_etc else ():
        shutil.copy2(Path("/etc") / name, root / "etc" / name)
    return root


def tree(root: Path) -> List[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


class Installed(NamedTuple):
    root: Path
    first: subprocess.CompletedProcess
    second: subprocess.CompletedProcess
    passwd_after_first: str
    config_after_edit: str
    reference_config: str  # config.yaml as the first run read it (others may edit it meanwhile)


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    """Install, edit the config as a user would, install again."""
    root = make_root()
    reference = (REPO / "config.yaml").read_text()
    first = run_script("--root", str(root))
    assert first.returncode == 0, first.stdout + first.stderr
    passwd = (root / "etc" / "passwd").read_text()
    config = root / "etc" / "birdd" / "config.yaml"
    config.write_text(config.read_text() + "# the station's own edit\n")
    edited = config.read_text()
    second = run_script("--root", str(root))
    assert second.returncode == 0, second.stdout + second.stderr
    yield Installed(root, first, second, passwd, edited, reference)
    shutil.rmtree(root)


def birdd_ids(root: Path) -> List[int]:
    line = next(
        x for x in (root / "etc" / "passwd").read_text().splitlines() if x.startswith("birdd:")
    )
    fields = line.split(":")
    assert fields[5:] == ["/var/lib/birdd", "/usr/sbin/nologin"], line
    return [int(fields[2]), int(fields[3])]


def test_shell_syntax_and_shellcheck() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (tests/install.sh: apt install shellcheck)")
    result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_first_run_installs_user_venv_model_config_and_unit(installed: Installed) -> None:
    root = installed.root
    uid, gid = birdd_ids(root)
    audio = next(
        x for x in (root / "etc" / "group").read_text().splitlines() if x.startswith("audio:")
    )
    assert "birdd" in audio.split(":")[3].split(",")
    assert (root / "etc" / "sysusers.d" / "birdd.conf").read_text() == (
        REPO / "deploy" / "systemd" / "birdd.sysusers"
    ).read_text()

    assert (root / "opt" / "birdd" / "pyvenv.cfg").is_file()
    assert os.readlink(root / "usr" / "local" / "bin" / "birdd") == "/opt/birdd/bin/birdd"
    version = subprocess.run(
        [str(root / "opt/birdd/bin/birdd"), "--version"], capture_output=True, text=True
    )
    assert version.stdout.strip() == run_birdd("--version").stdout.strip()

    unit = (root / "etc" / "systemd" / "system" / "birdd.service").read_text().splitlines()
    shipped = SHIPPED_UNIT.read_text().splitlines()
    changed = [(a, b) for a, b in zip(shipped, unit) if a != b]
    assert len(unit) == len(shipped)
    assert changed == [
        (
            "ExecStart=/usr/local/bin/birdd run --config /etc/birdd/config.yaml",
            "ExecStart=/opt/birdd/bin/birdd run --config /etc/birdd/config.yaml",
        )
    ]
    wants = root / "etc/systemd/system/multi-user.target.wants/birdd.service"
    assert os.readlink(wants) == "/etc/systemd/system/birdd.service"

    reference = installed.reference_config.splitlines()
    config = installed.config_after_edit.splitlines()[:-1]
    differ = [b for a, b in zip(reference, config) if a != b]
    assert len(config) == len(reference) and len(differ) == 1, differ
    assert differ[0].startswith("  id: ") and "id: birdd " not in differ[0]

    state = root / "var" / "lib" / "birdd"
    assert (state.stat().st_uid, state.stat().st_gid, state.stat().st_mode & 0o777) == (
        uid,
        gid,
        0o750,
    )
    manifest = state / "models" / "birdnet" / "manifest.json"
    assert manifest.stat().st_uid == uid
    assert "engine: tflite: x86_64" in installed.first.stdout
    assert "pip extras [live] for Python" in installed.first.stdout


def test_second_run_says_already_and_keeps_the_users_config(installed: Installed) -> None:
    out = installed.second.stdout + installed.second.stderr
    for line in (
        "user birdd: already exists",
        "virtualenv /opt/birdd: already there",
        "already linked: /usr/local/bin/birdd",
        "already up to date: /etc/systemd/system/birdd.service",
        "config: /etc/birdd/config.yaml already exists, kept as it is",
        "BirdNET V2.4 is already installed",
    ):
        assert line in out
    root = installed.root
    assert (root / "etc" / "birdd" / "config.yaml").read_text() == installed.config_after_edit
    assert (root / "etc" / "passwd").read_text() == installed.passwd_after_first


def test_installed_birdd_simulates_as_the_service_user(installed: Installed) -> None:
    """The venv's birdd, as user birdd, with the installed model and config, finds what the
    development install finds on the same recording."""
    root = installed.root
    uid, gid = birdd_ids(root)
    audio = recording("opensoundscape_1min_first30s.flac")
    copy = root / "var" / "lib" / "birdd" / audio.name
    shutil.copy(audio, copy)
    os.chown(copy, uid, gid)
    as_birdd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    env = dict(
        os.environ, BIRDD_DATA_DIR=str(root / "var/lib/birdd"), HOME=str(root / "var/lib/birdd")
    )
    args = simulate_args(copy, root / "var/lib/birdd/simulate.sqlite")
    config = ["--config", str(root / "etc/birdd/config.yaml")]
    result = subprocess.run(
        [*as_birdd, str(root / "opt/birdd/bin/birdd"), *config, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    rows = jsonl_rows(result.stdout)
    with tempfile.TemporaryDirectory() as tmp:
        reference = jsonl_rows(run_birdd(*simulate_args(copy, Path(tmp) / "ref.sqlite")).stdout)
    assert len(rows) == len(reference) > 0
    assert {row["model"]["sha256"] for row in rows} == {row["model"]["sha256"] for row in reference}
    for row, ref in zip(rows, reference):
        assert (row["offset_start"], row["species"]["scientific"]) == (
            ref["offset_start"],
            ref["species"]["scientific"],
        )
        assert abs(row["confidence"] - ref["confidence"]) <= 1e-3
    assert (root / "var/lib/birdd/simulate.sqlite").stat().st_uid == uid


def test_dry_run_prints_the_plan_and_changes_nothing() -> None:
    root = make_root()
    try:
        before = tree(root)
        result = run_script("--root", str(root), "--dry-run")
        assert result.returncode == 0, result.stderr
        assert "would create the virtualenv /opt/birdd" in result.stdout
        assert "would install /etc/birdd/config.yaml" in result.stdout
        assert tree(root) == before
    finally:
        shutil.rmtree(root)


@pytest.mark.parametrize(
    "files, expected",
    [
        (
            {"etc/nv_tegra_release": "# R35 (release), REVISION: 4.1, GCID: 33958178\n"},
            [
                "board: Jetson, L4T 35.4.1 (JetPack 5)",
                "engine: tensorrt: a Jetson",
                "pip extras [live,tensorrt] for Python",
            ],
        ),
        (
            {"proc/device-tree/model": "Raspberry Pi 4 Model B Rev 1.4\0"},
            [
                "board: Raspberry Pi 4 Model B Rev 1.4, Debian",
                "engine: tflite: a Raspberry Pi",
                "pip extras [live] for Python",
            ],
        ),
    ],
    ids=["jetson", "pi"],
)
def test_board_detection_from_the_roots_files(files: dict, expected: List[str]) -> None:
    root = make_root()
    try:
        for name, text in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
        result = run_script("--root", str(root), "--dry-run")
        assert result.returncode == 0, result.stderr
        for line in expected:
            assert line in result.stdout, result.stdout
    finally:
        shutil.rmtree(root)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--from", "/nonexistent/birdd"], "--from /nonexistent/birdd: no such file or directory"),
        (["--engine", "cuda"], "--engine 'cuda' is not one of"),
        (["--purge"], "--purge goes with --uninstall"),
        (["--prefix", "/home/pi/birdd"], "ProtectHome=yes hides it"),
        (["--bogus"], "unknown option '--bogus'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: List[str], message: str) -> None:
    root = make_root(host_etc=False)
    try:
        result = run_script("--root", str(root), *args)
        assert result.returncode == 2
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("birdd-install: error: "), lines
        assert message in lines[0]
        assert tree(root) == ["etc"]
    finally:
        shutil.rmtree(root)


def test_uninstall_keeps_data_and_config_then_purge_removes_them(installed: Installed) -> None:
    """Last: it takes the shared install apart."""
    root = installed.root
    result = run_script("--root", str(root), "--uninstall")
    assert result.returncode == 0, result.stderr
    for gone in (
        "opt/birdd",
        "etc/systemd/system/birdd.service",
        "usr/local/bin/birdd",
        "etc/systemd/system/multi-user.target.wants/birdd.service",
        "etc/sysusers.d/birdd.conf",
    ):
        assert not (root / gone).exists() and not (root / gone).is_symlink(), gone
    assert "birdd:" not in (root / "etc" / "passwd").read_text()
    assert not any(
        x.startswith("birdd:") for x in (root / "etc" / "group").read_text().splitlines()
    )
    assert (root / "etc/birdd/config.yaml").read_text() == installed.config_after_edit
    assert (root / "var/lib/birdd/models/birdnet/manifest.json").is_file()
    assert "kept: /var/lib/birdd" in result.stdout

    again = run_script("--root", str(root), "--uninstall", "--purge")
    assert again.returncode == 0, again.stderr
    assert "already gone: /opt/birdd" in again.stdout
    assert not (root / "var/lib/birdd").exists() and not (root / "etc/birdd").exists()


# The real paths, without --root: /etc, /opt, /usr/local and /var/lib are overlays in a private
# mount namespace, so the script writes where it would on a station and this machine keeps none
# of it. Each mount is checked before the script runs.
IN_NAMESPACE = r"""
set -euo pipefail
work=$1 script=$2 audio=$3
for dir in /etc /opt /usr/local /var/lib; do
  name=$(echo "$dir" | tr / _)
  mkdir -p "$work/$name/upper" "$work/$name/work"
  layers="lowerdir=$dir,upperdir=$work/$name/upper,workdir=$work/$name/work"
  mount -t overlay overlay -o "$layers" "$dir"
  mountpoint -q "$dir"
done
bash "$script"
echo "== passwd $(getent passwd birdd)"
echo "== groups $(id -nG birdd)"
echo "== wants $(readlink /etc/systemd/system/multi-user.target.wants/birdd.service)"
cp "$audio" /var/lib/birdd/robin.ogg
cd /var/lib/birdd
runuser -u birdd -- env BIRDD_DATA_DIR=/var/lib/birdd birdd --simulate robin.ogg \
  --config /etc/birdd/config.yaml --format jsonl --db robin.sqlite >robin.jsonl
cd /
bash "$script" --uninstall
echo "== after uninstall: $(getent passwd birdd || echo no user birdd), $(ls /var/lib/birdd/models)"
"""


def test_install_at_slash_in_a_private_mount_namespace(tmp_path: Path) -> None:
    """No --root: sysusers, `systemctl enable` and the `birdd` link at their real paths, the
    'systemd is not running' branch, then the installed birdd run by name as user birdd."""
    make_root(host_etc=False)  # the same preconditions (root, systemd's tools)
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True)
    if probe.returncode != 0 or shutil.which("runuser") is None:
        pytest.skip(f"needs unshare -m and runuser as root: {probe.stderr.strip()}")
    args = [str(tmp_path), str(SCRIPT), str(recording("Erithacus_rubecula_robin.ogg"))]
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "bash", "-c", IN_NAMESPACE, "ns", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "== passwd birdd:x:" in out and ":/var/lib/birdd:/usr/sbin/nologin" in out
    assert "== groups birdd audio" in out
    assert "== wants /etc/systemd/system/birdd.service" in out
    if not Path("/run/systemd/system").is_dir():
        assert "systemd is not running here" in out
    # The overlay's upper layer holds what birdd wrote in /var/lib/birdd.
    rows = jsonl_rows((tmp_path / "_var_lib" / "upper" / "birdd" / "robin.jsonl").read_text())
    assert [row["species"]["scientific"] for row in rows] == ["Erithacus rubecula"]
    assert "== after uninstall: no user birdd, birdnet" in out
