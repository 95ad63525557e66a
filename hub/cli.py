"""``birdd hub …``: the monitoring hub's commands (``birdd hub serve``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from birdd.daemon.mqtt.config import DEFAULT_PASSWORD_ENV, parse_mqtt_url
from birdd.hub.config import (
    DEFAULT_HUB_CONFIG,
    DEFAULT_LISTEN,
    POSTGRES_PASSWORD_ENV,
    HubConfig,
    load_hub_config,
)
from birdd.hub.store import StoreError

PROG = "birdd hub"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="The monitoring hub.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="ingest every station's detections over MQTT into the hub's database"
    )
    serve.add_argument(
        "--config",
        type=Path,
        help=f"hub YAML config (default: $BIRDD_HUB_CONFIG or {DEFAULT_HUB_CONFIG} when it "
        "exists; reference: hub/hub.yaml)",
    )
    serve.add_argument(
        "--mqtt",
        metavar="URL",
        help="mqtt[s]://[user@]host[:port][/prefix] (the password from "
        f"${DEFAULT_PASSWORD_ENV} or mqtt.password_file)",
    )
    where = serve.add_mutually_exclusive_group()
    where.add_argument("--db", type=Path, metavar="PATH", help="SQLite database (the default)")
    where.add_argument(
        "--postgres",
        metavar="DSN",
        help="PostgreSQL DSN without the password ('host=db dbname=birdd user=hub'; the "
        f"password from ${POSTGRES_PASSWORD_ENV}, store.password_file or PGPASSWORD)",
    )
    serve.add_argument(
        "--listen", metavar="HOST:PORT", help=f"the web server's address (default {DEFAULT_LISTEN})"
    )
    serve.add_argument(
        "--client-id", help="MQTT client id of the hub's session (default birdd-hub)"
    )
    serve.add_argument("--no-web", action="store_true", help="ingest only, no web server")
    serve.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return parser


def overrides(args: argparse.Namespace) -> Dict[str, Any]:
    found: Dict[str, Any] = {}
    if args.mqtt is not None:
        keys = parse_mqtt_url(args.mqtt)
        for key in ("host", "port", "username", "tls"):
            if key in keys:
                found[f"mqtt.{key}"] = keys[key]
        if "topic_prefix" in keys:
            found["mqtt.topic_prefixes"] = [keys["topic_prefix"]]
    if args.client_id is not None:
        found["mqtt.client_id"] = args.client_id
    if args.db is not None:
        found["store.sqlite"] = args.db
    if args.postgres is not None:
        found["store.postgres"] = args.postgres
    if args.listen is not None:
        found["web.listen"] = args.listen
    return found


def config_path(args: argparse.Namespace) -> Optional[Path]:
    if args.config is not None:
        return Path(args.config)
    from_env = os.environ.get("BIRDD_HUB_CONFIG")
    if from_env:
        return Path(from_env)
    return DEFAULT_HUB_CONFIG if DEFAULT_HUB_CONFIG.is_file() else None


def hub_config(args: argparse.Namespace) -> HubConfig:
    config = load_hub_config(config_path(args), overrides(args))
    if args.db is not None and config.store.postgres is not None:
        raise ValueError("--db: the config names a PostgreSQL store; drop store.postgres")
    return config


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    if args.command is None:
        parser.print_help()
        return 2
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("birdd: %(message)s"))
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, handlers=[handler])
    return run_serve(args)


def run_serve(args: argparse.Namespace) -> int:
    """0 after SIGINT/SIGTERM; 2 for bad input (flags, config, DSN, database path)."""
    from birdd.daemon.app.signals import StopOnSignals
    from birdd.hub.serve import serve

    stop = threading.Event()
    try:
        config = hub_config(args)
        with StopOnSignals(stop.set, "stopping the hub"):
            return serve(config, stop, web=not args.no_web)
    except ImportError as exc:
        print(f"{PROG}: needs {exc.name}: pip install 'birdd[hub]'", file=sys.stderr)
        return 2
    except (ValueError, StoreError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
