"""deploy/systemd/birdd.service: systemd accepts it, its command line is one birdd parses, and
its restart, stop and data-dir settings match what `birdd run` does (exit 0 on SIGTERM, 1 to be
restarted, 2 never; the database and the models under $BIRDD_DATA_DIR).

The docs are held to the same standard: every `birdd ...` command and ExecStart= in
docs/deployment.md and deploy/systemd/README.md must parse, every YAML config must validate, and
every ini block (drop-ins, the user unit) must pass `systemd-analyze verify`. The two
systemd-analyze tests run when systemd is installed (Debian: apt install systemd) and are
skipped otherwise."""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import yaml
from systemd_units import Unit, parse_unit

from birdd.daemon.app.cli import build_parser, normalise_argv
from birdd.daemon.app.subcommands import OWN_PARSERS
from birdd.daemon.config import ConfigError, load_config
from birdd.daemon.mqtt.config import MqttConfig
from birdd.engines.models.modeldir import models_dir

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "deploy" / "systemd"
UNIT = SYSTEMD / "birdd.service"
SYSUSERS = SYSTEMD / "birdd.sysusers"
DOCS = [REPO / "docs" / "deployment.md", SYSTEMD / "README.md"]
BINARY = "/usr/local/bin/birdd"


@pytest.fixture(scope="module")
def unit() -> Unit:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


def one(unit: Unit, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key, [])
    assert len(values) == 1, f"[{section}] {key}= should be set once, found {values}"
    return values[0]


def words(unit: Unit, section: str, key: str) -> List[str]:
    return [word for value in unit.get(section, {}).get(key, []) for word in value.split()]


def environment(unit: Unit) -> Dict[str, str]:
    pairs = [
        pair for value in unit["Service"].get("Environment", []) for pair in shlex.split(value)
    ]
    return dict(pair.split("=", 1) for pair in pairs)


def seconds(span: str) -> float:
    """A systemd time span such as '60', '90s', '1min 30s' or '2min'."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts and "".join(n + u for n, u in parts) == span.replace(" ", ""), span
    return sum(float(number) * units[unit] for number, unit in parts)


def exec_start_argv(unit: Unit) -> List[str]:
    command = shlex.split(one(unit, "Service", "ExecStart"))
    assert command[0] == BINARY, "README.md and docs/deployment.md assume this path"
    return command[1:]


def parse_birdd(argv: List[str]) -> argparse.Namespace:
    """Parse as `birdd` would; a flag the CLI lacks fails the test instead of exiting."""
    try:
        return build_parser().parse_args(normalise_argv(argv))
    except SystemExit as exc:
        pytest.fail(f"birdd {shlex.join(argv)}: the command line refuses it (exit {exc.code})")


def runnable_copy(text: str, path: Path) -> Path:
    """Write ``text`` to ``path`` with every birdd binary in ExecStart= replaced by this
    interpreter's ``-m birdd.daemon``: systemd-analyze checks that the binary exists."""
    here = f"{shlex.quote(sys.executable)} -m birdd.daemon "
    text = re.sub(r"^ExecStart=/\S*/birdd ", f"ExecStart={here}", text, flags=re.M)
    path.write_text(text, encoding="utf-8")
    return path


def assert_verified(analyze: str, units: List[Path]) -> None:
    result = subprocess.run(
        [analyze, "verify", *map(str, units)], capture_output=True, text=True, timeout=60
    )
    output = (result.stdout + result.stderr).strip()
    # it exits 0 even for unknown keys and bad values: any line about our files is a failure
    about_us = [line for line in output.splitlines() if "birdd" in line]
    assert result.returncode == 0 and not about_us, output


@pytest.mark.system  # systemd-analyze
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian: apt install systemd)")
    copy = runnable_copy(UNIT.read_text(encoding="utf-8"), tmp_path / "birdd.service")
    assert "birdd.daemon run --config" in copy.read_text(encoding="utf-8")
    assert_verified(analyze, [copy])


def test_exec_start_is_a_command_line_birdd_accepts(unit: Unit) -> None:
    argv = exec_start_argv(unit)
    args = parse_birdd(argv)
    assert args.command == "run"
    assert args.config == Path("/etc/birdd/config.yaml")
    assert args.duration is None, "a service runs until SIGTERM"
    assert one(unit, "Service", "Type") == "notify", (
        "birdd run says READY=1 (daemon/app/sdnotify.py)"
    )
    assert one(unit, "Service", "NotifyAccess") == "main"
    # ConfigurationDirectory= is the folder of --config
    assert Path("/etc", one(unit, "Service", "ConfigurationDirectory")) == args.config.parent


def test_reload_is_sighup_to_birdd(unit: Unit) -> None:
    """`systemctl reload birdd` → SIGHUP, which birdd run handles (tests/test_reload.py)."""
    assert one(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"


def test_restart_policy_matches_the_exit_codes(unit: Unit) -> None:
    assert one(unit, "Service", "Restart") == "on-failure"  # 1 and crashes: restart
    assert "2" in words(unit, "Service", "RestartPreventExitStatus")  # bad config: never loop
    assert seconds(one(unit, "Service", "RestartSec")) >= 1
    # a missing microphone at boot is retried forever, not given up after five tries
    assert one(unit, "Unit", "StartLimitIntervalSec") in ("0", "infinity")


def test_watchdog_outlasts_the_pauses_birdd_recovers_from_itself(unit: Unit) -> None:
    """birdd calls a part stalled after WatchdogSec/2: that must stay above the engine
    worker's own call timeout (it replaces a hung worker itself) and the live inputs' default
    watchdog; a watchdog kill (SIGABRT) is a failure Restart=on-failure restarts."""
    from birdd.daemon.sources.live import ReconnectPolicy
    from birdd.engines.worker import WorkerEngine

    stall_s = seconds(one(unit, "Service", "WatchdogSec")) / 2
    timeout_s = inspect.signature(WorkerEngine.__init__).parameters["timeout_s"].default
    assert stall_s >= timeout_s and stall_s > ReconnectPolicy().watchdog_s
    assert one(unit, "Service", "NotifyAccess") == "main"  # the pings come from birdd itself
    assert one(unit, "Service", "Restart") == "on-failure"


def test_stop_leaves_time_for_the_drain(unit: Unit) -> None:
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    # SIGTERM to birdd alone: it stops its ffmpeg and engine-worker children itself, after the
    # worker has scored the windows already buffered
    assert one(unit, "Service", "KillMode") == "mixed"
    drain = MqttConfig().drain_timeout_s
    assert seconds(one(unit, "Service", "TimeoutStopSec")) >= drain + 20


def test_data_dir_is_the_writable_state_directory(unit: Unit, monkeypatch) -> None:
    state = one(unit, "Service", "StateDirectory")
    data_dir = Path("/var/lib", state)
    assert environment(unit)["BIRDD_DATA_DIR"] == str(data_dir)
    assert one(unit, "Service", "WorkingDirectory") == str(data_dir)
    # what birdd makes of that environment: the database and the models land there
    monkeypatch.setenv("BIRDD_DATA_DIR", str(data_dir))
    assert load_config(None).storage.db == data_dir / "birdd.sqlite"
    assert models_dir() == data_dir / "models"
    # the rest of the file system is read-only: nothing else is listed as writable
    assert one(unit, "Service", "ProtectSystem") == "strict"
    assert not unit["Service"].get("ReadWritePaths")


def test_user_groups_and_sandbox_keep_the_sound_devices(unit: Unit) -> None:
    service = unit["Service"]
    assert one(unit, "Service", "User") == "birdd"
    assert service.get("DynamicUser", ["no"]) == ["no"]
    assert "audio" in words(unit, "Service", "SupplementaryGroups")
    assert one(unit, "Service", "NoNewPrivileges") == "yes"
    assert one(unit, "Service", "ProtectHome") in ("yes", "read-only", "tmpfs")
    assert one(unit, "Service", "PrivateTmp") == "yes"
    assert service.get("PrivateDevices", ["no"]) == ["no"], "it would hide /dev/snd"
    assert service.get("PrivateUsers", ["no"]) == ["no"], "it would drop the audio group"
    assert "ProcSubset" not in service, "ProcSubset=pid hides /proc/asound from ALSA"
    assert service.get("MemoryDenyWriteExecute", ["no"]) == ["no"], "sounddevice's callback"
    if service.get("DevicePolicy", ["auto"]) != ["auto"] or service.get("DeviceAllow"):
        assert "char-alsa" in words(unit, "Service", "DeviceAllow")
    assert "AF_UNIX" in words(unit, "Service", "RestrictAddressFamilies")
    assert "AF_INET" in words(unit, "Service", "RestrictAddressFamilies")


def test_ordering_and_install(unit: Unit) -> None:
    assert "network-online.target" in words(unit, "Unit", "Wants")
    assert {"network-online.target", "sound.target"} <= set(words(unit, "Unit", "After"))
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_sysusers_creates_the_user_the_unit_runs_as(unit: Unit, tmp_path: Path) -> None:
    lines = [
        shlex.split(line)
        for line in SYSUSERS.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    user = one(unit, "Service", "User")
    state = Path("/var/lib", one(unit, "Service", "StateDirectory"))
    assert ["u", user, "-"] == lines[0][:3] and lines[0][4] == str(state)
    assert ["m", user, "audio"] in lines
    sysusers = shutil.which("systemd-sysusers")
    if sysusers is None:
        return
    # systemd-sysusers itself, on a scratch root holding a copy of this machine's /etc
    etc = tmp_path / "etc"
    (etc / "sysusers.d").mkdir(parents=True)
    for name in ("passwd", "group"):
        shutil.copy(f"/etc/{name}", etc / name)
    shutil.copy(SYSUSERS, etc / "sysusers.d" / "birdd.conf")
    result = subprocess.run(
        [sysusers, f"--root={tmp_path}", "--dry-run"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert f"Creating user '{user}'" in result.stderr or user in (etc / "passwd").read_text()


def code_blocks(language: str) -> List[tuple]:
    """(doc name, text) of every fenced ``language`` block in the deployment docs."""
    pattern = rf"^```{language}\n(.*?)^```"
    return [
        (doc.name, block)
        for doc in DOCS
        for block in re.findall(pattern, doc.read_text(encoding="utf-8"), flags=re.M | re.S)
    ]


def birdd_argv(tokens: List[str]) -> Optional[List[str]]:
    """The arguments of the birdd command in a shell line (after sudo, env, a path), if any:
    the first token named birdd that is followed by a birdd subcommand."""
    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    subcommands = {"--simulate", *actions[0].choices}
    for index, token in enumerate(tokens[:-1]):
        if token.rsplit("/", 1)[-1] == "birdd" and tokens[index + 1] in subcommands:
            argv = []
            for word in tokens[index + 1 :]:
                if word in ("|", "||", "&&", ";", ">", "2>&1", "&"):
                    break
                argv.append(word)
            return argv
    return None


def commands_in_docs() -> List[tuple]:
    """Every `birdd ...` command in the docs' shell blocks, and every ExecStart= in their ini
    blocks, with its arguments."""
    found = []
    for doc, block in code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            argv = birdd_argv(shlex.split(line, comments=True))
            if argv is not None:
                found.append((doc, line.strip(), argv))
    for doc, block in code_blocks("ini"):
        for line in block.splitlines():
            if line.startswith("ExecStart=") and line.strip() != "ExecStart=":
                argv = birdd_argv(shlex.split(line[len("ExecStart=") :]))
                assert argv is not None, f"{doc}: {line!r} does not run birdd"
                found.append((doc, line.strip(), argv))
    return found


def parse_command(argv: List[str]) -> str:
    """The command ``argv`` names, once its arguments parse: by the command's own parser
    for the commands that have one (``birdd doctor --config …``), else by birdd's."""
    if argv[0] in OWN_PARSERS:
        importlib.import_module(OWN_PARSERS[argv[0]][0]).build_parser().parse_args(argv[1:])
        return argv[0]
    return build_parser().parse_args(argv).command


def test_every_birdd_command_in_the_docs_parses() -> None:
    found = commands_in_docs()
    commands = set()
    for doc, line, argv in found:
        try:
            commands.add(parse_command(normalise_argv(argv)))
        except SystemExit:
            pytest.fail(f"{doc}: {line!r}: birdd refuses this command line")
    assert {"run", "devices", "models", "listen", "check-config", "publish"} <= commands, found


def test_every_config_in_the_docs_is_valid(tmp_path: Path) -> None:
    """Every YAML block is a birdd config, except Prometheus' scrape config (which must parse
    as YAML and name the birdd job)."""
    blocks = code_blocks("yaml")
    scrape = [(doc, block) for doc, block in blocks if block.startswith("scrape_configs:")]
    assert len(scrape) == 1 and yaml.safe_load(scrape[0][1])["scrape_configs"][0]["job_name"]
    blocks = [item for item in blocks if item not in scrape]
    assert len(blocks) >= 3
    for number, (doc, block) in enumerate(blocks):
        path = tmp_path / f"{number}.yaml"
        path.write_text(block, encoding="utf-8")
        try:
            load_config(path)
        except ConfigError as exc:
            pytest.fail(f"{doc}: a config that birdd refuses: {exc.lines}\n{block}")


@pytest.mark.system  # systemd-analyze
def test_the_docs_drop_ins_and_user_unit_pass_systemd_analyze(tmp_path: Path) -> None:
    """Each ini block: a [Service]-only block is a drop-in for birdd.service, one with [Unit]
    a unit of its own (the user unit); all are checked together by systemd-analyze."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian: apt install systemd)")
    units = [runnable_copy(UNIT.read_text(encoding="utf-8"), tmp_path / "birdd.service")]
    dropins = tmp_path / "birdd.service.d"
    dropins.mkdir()
    for number, (_, block) in enumerate(code_blocks("ini")):
        if block.lstrip().startswith("[Unit]"):
            units.append(runnable_copy(block, tmp_path / f"birdd-doc-{number}.service"))
        else:
            runnable_copy(block, dropins / f"{number:02d}.conf")
    assert len(list(dropins.iterdir())) >= 3 and len(units) >= 2
    assert_verified(analyze, units)


def test_sigterm_stops_it_as_systemd_would(unit: Unit, birdnet_model: Path, tmp_path: Path) -> None:
    """The unit's command line and environment with a microphone that is not there: birdd
    waits for it, systemd's SIGTERM stops it with status 0 well within TimeoutStopSec (a warning
    says it never heard a sound), and the run is in the database under $BIRDD_DATA_DIR."""
    from birdd.daemon.sources.base import SourceError
    from birdd.daemon.sources.device import import_sounddevice

    try:
        import_sounddevice()
    except SourceError as exc:
        pytest.skip(str(exc))
    installed = models_dir()
    data = tmp_path / "state"
    data.mkdir()
    (data / "models").symlink_to(installed, target_is_directory=True)
    config = tmp_path / "config.yaml"
    config.write_text("audio:\n  inputs: [NoSuchMicrophone]\n", encoding="utf-8")
    argv = exec_start_argv(unit)
    argv[argv.index("--config") + 1] = str(config)
    env = {**os.environ, **environment(unit), "BIRDD_DATA_DIR": str(data)}
    process = subprocess.Popen(
        [sys.executable, "-m", "birdd.daemon", *argv],
        env=env,
        cwd=str(data),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: List[str] = []
    waiting = threading.Event()

    def read_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if "waiting for NoSuchMicrophone" in line:
                waiting.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not waiting.wait(0.2):
            if process.poll() is not None or time.monotonic() > deadline:
                reader.join(5)
                output = "".join(lines)
                pytest.fail(f"exit {process.poll()} before waiting for the input:\n{output}")
        process.send_signal(signal.SIGTERM)
        began = time.monotonic()
        process.wait(seconds(one(unit, "Service", "TimeoutStopSec")))
        stopped_in = time.monotonic() - began
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(5)
    assert process.returncode == 0, "".join(lines)
    assert stopped_in < 10, stopped_in
    assert "Traceback" not in "".join(lines)
    assert any(
        line.startswith("birdd: no audio from any input: NoSuchMicrophone: ") for line in lines
    )
    database = data / "birdd.sqlite"
    runs = sqlite3.connect(str(database)).execute("SELECT mode, status FROM runs").fetchall()
    assert runs == [("live", "complete")]
