"""From the command line to a validated config: which file, and which keys the flags override."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Dict, Optional

from birdd.daemon.config import BirddConfig, load_config
from birdd.daemon.mqtt.config import parse_mqtt_url

DEFAULT_CONFIG = Path("/etc/birdd/config.yaml")

# Flags that override a config key: flag destination → dotted key path.
OVERRIDES = {
    "station": "station.id",
    "db": "storage.db",
    "overlap": "windows.overlap_s",
    "channel": "audio.channels",
    "min_conf": "postprocess.min_confidence",
    "sensitivity": "postprocess.sensitivity",
    "per_window": "postprocess.per_window",
    "non_birds": "postprocess.non_birds",
    "include": "postprocess.include",
    "exclude": "postprocess.exclude",
    "gate": "postprocess.gate.model",
    "format": "output.format",
    "output": "output.path",
    "threads": "engine.threads",
    "batch_size": "engine.batch_size",
    "model": "engine.model",
    "engine": "engine.type",
}


def overrides_from(args: argparse.Namespace) -> Dict[str, Any]:
    overrides = {
        key: getattr(args, flag)
        for flag, key in OVERRIDES.items()
        if getattr(args, flag, None) is not None
    }
    location = {
        key: getattr(args, key)
        for key in ("lat", "lon", "week")
        if getattr(args, key, None) is not None
    }
    if location:
        overrides["postprocess.location"] = location
    if getattr(args, "min_conf", None) is not None:
        # The threshold typed on the command line is the one every class gets (species_thresholds
        # in the config still win): it replaces the model's own per-class thresholds too.
        overrides["postprocess.model_thresholds"] = False
    inputs = (getattr(args, "device", None) or []) + (getattr(args, "input", None) or [])
    if inputs:
        overrides["audio.inputs"] = inputs
    clips = getattr(args, "clips", None)
    if clips is not None:
        overrides["clips.dir"], overrides["clips.enabled"] = clips, True
    url = getattr(args, "mqtt", None)
    if url is not None:
        for key, value in parse_mqtt_url(url).items():
            overrides[f"mqtt.{key}"] = value
    return overrides


def config_path(args: argparse.Namespace) -> Optional[Path]:
    if args.config is not None:
        return args.config
    from_env = os.environ.get("BIRDD_CONFIG")
    if from_env:
        return Path(from_env)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def config_from(args: argparse.Namespace) -> BirddConfig:
    """The config file the flags name (or the default one), with the flags' overrides applied."""
    return load_config(config_path(args), overrides_from(args))
