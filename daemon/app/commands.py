"""The handlers behind each ``birdd`` subcommand (argument parsing lives in ``cli``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from birdd.daemon.app.settings import config_from
from birdd.daemon.app.signals import StopOnSignals
from birdd.daemon.app.simulate import simulate
from birdd.daemon.config import BirddConfig, ConfigError, load_config
from birdd.daemon.mqtt.service import MqttPublisher
from birdd.engines.errors import RuntimeMissingError
from birdd.engines.models.artifact import load_artifact
from birdd.engines.models.install import install_birdnet, install_demo_recording
from birdd.engines.models.labels import SpeciesIndex
from birdd.engines.models.modeldir import models_dir, read_manifest, resolve_model
from birdd.engines.registry import engine_classes

log = logging.getLogger("birdd")


def cmd_simulate(args: argparse.Namespace) -> int:
    config = config_from(args)
    return simulate(config, args.file, args.start_time, args.realtime)


def cmd_analyze(args: argparse.Namespace) -> int:
    from birdd.daemon.analyze.job import JobOptions, analyze, cores, with_threads
    from birdd.daemon.analyze.ray_job import RayJobError

    on_ray = args.ray is not None  # workers 0: one per cluster CPU, one thread each
    workers = args.workers or (0 if on_ray else cores())
    config = config_from(args)
    if args.threads is None:
        config = with_threads(config, 1 if on_ray else max(1, cores() // workers))
    output = Path(args.output) if args.output else None
    options = JobOptions(
        args.paths, workers, args.force, args.format, output, args.combined, args.quiet, args.ray
    )
    try:
        return analyze(config, options)
    except RayJobError as exc:  # the run is marked failed; what was committed stays
        print(f"birdd: error: {exc}", file=sys.stderr)
        return 1


def cmd_run(args: argparse.Namespace) -> int:
    from birdd.daemon.app.live import run_live

    if args.duration is not None and args.duration <= 0:
        raise ValueError(f"--duration {args.duration:g}: give a number of seconds above 0")
    config = config_from(args)
    return run_live(config, args.duration, lambda: config_from(args))


def cmd_devices(args: argparse.Namespace) -> int:
    from birdd.daemon.sources.device import PREFERRED_RATE, import_sounddevice, input_devices

    sd = import_sounddevice()
    devices = input_devices(sd)
    if not devices:
        print(
            "no input devices: plug in a microphone, or check that PortAudio sees the sound "
            "server (ALSA, PulseAudio, PipeWire)",
            file=sys.stderr,
        )
        return 1
    default = sd.default.device[0]
    print(f"{'':2}{'index':>5}  {'name':<40} {'host API':<12} {'channels':>8}  default rate")
    for device in devices:
        mark = "* " if device["index"] == default else "  "
        print(
            f"{mark}{device['index']:>5}  {device['name'][:40]:<40} {device['hostapi'][:12]:<12} "
            f"{device['channels']:>8}  {device['default_rate']} Hz"
        )
    print(f"(* the default input; birdd captures at {PREFERRED_RATE} Hz where the device can)")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    """Deliver the outbox without analysing audio: 0 once it is empty, 1 at the timeout."""
    config = config_from(args)
    if not config.mqtt.enabled:
        raise ValueError("MQTT is off: give --mqtt mqtt://host or set mqtt.enabled: true")
    if not config.storage.db.is_file():
        raise ValueError(f"{config.storage.db}: no such database; give --db")
    publisher = MqttPublisher(config, as_station=False)
    log.info(
        "mqtt: %d detection(s) to publish from %s", publisher.outbox.backlog, config.storage.db
    )
    publisher.start()
    with StopOnSignals(publisher.cancel, "stopping; the rest stays in the outbox"):
        publisher.drain(args.timeout)
    state = publisher.connection.state
    remaining = publisher.stop()
    published = publisher.outbox.published
    if remaining:
        print(
            f"birdd: {remaining} detection(s) still unpublished after {args.timeout:g} s "
            f"(published {published}; mqtt: {state})",
            file=sys.stderr,
        )
        return 1
    log.info("published %d detection(s); the outbox is empty", published)
    return 0


def cmd_listen(args: argparse.Namespace) -> int:
    from birdd.daemon.mqtt import listen

    return listen.run(args)


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        load_config(args.file)
    except ConfigError as exc:
        for line in exc.lines:
            print(line)
        return 2
    print(f"{args.file}: valid")
    return 0


def cmd_config_schema(args: argparse.Namespace) -> int:
    print(json.dumps(BirddConfig.model_json_schema(), indent=1))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    if args.models_command == "install":
        if args.name == "demo":
            print(install_demo_recording(log=log.info))
        else:
            install_birdnet(log=log.info, force=args.force)
        return 0
    if args.models_command == "list":
        for folder in sorted(p for p in models_dir().glob("*") if p.is_dir()):
            for role, files in read_manifest(folder).items():
                for fmt, name in files.items():
                    print(f"{folder.name:<12} {role:<22} {fmt:<9} {folder / name}")
        return 0
    if args.models_command == "convert":
        from birdd.engines.models.convert import convert_birdnet_to_onnx

        print(convert_birdnet_to_onnx(models_dir() / args.name, log=log.info, force=args.force))
        return 0
    print("usage: birdd models {install NAME | list | convert NAME}", file=sys.stderr)
    return 2


def cmd_species(args: argparse.Namespace) -> int:
    """One line per matching class; 1 with one line on stderr when none matches."""
    artifact = load_artifact(resolve_model(args.model, "tflite"), verify_hash=False)
    query = args.query.casefold()
    index = SpeciesIndex(artifact.species)
    exact = index.find(args.query) if query else None
    matches = [
        sp
        for number, sp in enumerate(artifact.species)
        if number == exact or query in f"{sp.label} {sp.code or ''}".casefold()
    ]
    if not matches:
        print(
            f"birdd: no class matches {args.query!r}; try part of a name or an eBird code",
            file=sys.stderr,
        )
        return 1
    for sp in matches:
        tag = "" if sp.is_bird else "  (non-bird)"
        print(f"{sp.code or '-':<10} {sp.scientific:<32} {sp.common}{tag}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Install what is missing, simulate the demo recording from a stated start time, and say
    how to run one's own recordings next."""
    install_birdnet(log=log.info)
    recording = install_demo_recording(log=log.info)
    log.info(
        "simulating %s, which carries no time of its own: it starts at %s "
        "(same as: birdd --simulate %s --start-time %s)",
        recording,
        args.start_time,
        recording,
        args.start_time,
    )
    config = load_config(None, {})
    code = simulate(config, recording, args.start_time, None)
    log.info(
        "next, your own recordings: birdd --simulate YOUR_RECORDING (wav, flac, ogg/opus or "
        "mp3; --start-time ISO8601 unless the file name has a recorder's YYYYMMDD_HHMMSS stamp)"
    )
    return code


def cmd_engines(args: argparse.Namespace) -> int:
    """``birdd engines [list]``: one line per registered engine; ``build``: a TensorRT plan."""
    if getattr(args, "engines_command", None) == "build":
        return engines_build(args)
    return engines_list()


BUILD_FLAGS = {"batch_size": "--batch", "workspace_mb": "--workspace-mb", "device": "--device"}


def engines_build(args: argparse.Namespace) -> int:
    """Build (or find cached) the TensorRT plan of an ONNX model; print its path."""
    from birdd.engines.tensorrt import TensorRTConfig, build_for_command

    if args.precision == "int8" and not args.calib:
        raise ValueError("--int8 needs --calib DIR: a folder of recordings from the site")
    if args.calib and args.precision != "int8":
        raise ValueError("--calib is for --int8 only")
    fields = {
        "model": args.model,
        "precision": args.precision,
        "calibration": args.calib,
        "batch_size": args.batch,
        "device": args.device,
        "workspace_mb": args.workspace_mb,
        "python": args.python,
    }
    try:
        config = TensorRTConfig(**fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        flag = BUILD_FLAGS.get(field, field)
        raise ValueError(f"{flag} {fields.get(field)}: {error['msg']}") from None
    print(build_for_command(config, force=args.force))
    return 0


def engines_list() -> int:
    """One line per registered engine: usable here (with its runtime) or what to install."""
    usable = 0
    for name, engine in sorted(engine_classes().items()):
        try:
            state = f"usable    {engine.probe()}"
            usable += 1
        except RuntimeMissingError as exc:
            state = f"missing   {exc}"
        print(f"{name:<10} {state}")
    return 0 if usable else 1
