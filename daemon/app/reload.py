"""SIGHUP: re-read the config file the daemon was started with and apply what can change live.

The signal handler only asks (``request``); the main thread, which already wakes four times a
second for the pipeline's progress, does the work (``poll``), so nothing heavier than setting
a flag runs inside a signal handler. A new config is validated first: an invalid one is
refused with one log line and the running config stays. What can change without losing
buffered audio is the post-processing that picks detections from the scores (thresholds,
species lists, sensitivity, location filter): a new post-processor takes over the open events
of the old one in the inference thread; and the MQTT connection, which reconnects (the outbox
in SQLite keeps what the broker has not acknowledged); and the clips' budget, which the
housekeeping applies on its next pass, and the clips' folder, format, pre- and post-roll and
privacy guard, for the next clip; and in ``birdd run`` the inputs, of which only those
added, removed or opened differently are started, stopped (their buffered windows scored
first) or restarted. Every other changed key is named in
one warning line as needing a restart, and the daemon keeps running on its old value.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

from birdd.daemon.app.sdnotify import notify
from birdd.daemon.clips.privacy import ClipsError
from birdd.daemon.config import BirddConfig, ConfigError
from birdd.daemon.postprocess import PostprocessError
from birdd.daemon.postprocess.config import PostprocessConfig
from birdd.daemon.sources.base import SourceError

log = logging.getLogger("birdd")

# postprocess keys a new post-processor applies to the next window. The event-tracking keys
# (merge, max_event_s, hold_down_s, per_window) shape events already open, and the gate needs
# the engine to hand out embeddings: those need a restart.
LIVE_POSTPROCESS = (
    "sensitivity",
    "min_confidence",
    "model_thresholds",
    "species_thresholds",
    "include",
    "exclude",
    "non_birds",
    "location",
)
# The clips' budget, which only the housekeeping reads (on its next pass).
LIVE_BUDGET = ("clips.max_total_mb", "clips.max_age_days", "clips.keep_per_species_day")
# The clips' folder, format, pre- and post-roll and privacy, for the next clip (turning clips
# on or off and the upload need a restart).
LIVE_CLIPS = ("clips.dir", "clips.format", "clips.pre_s", "clips.post_s", "clips.privacy")
# What the inputs are and how each is opened: inputs added, removed or opened differently are
# started, stopped or restarted; the others keep running. The channels, the ring buffer and
# the silence warning shape every input's streams: those need a restart.
LIVE_AUDIO = (
    "audio.inputs",
    "audio.decoder",
    "audio.watchdog_s",
    "audio.reconnect_max_s",
    "audio.block_s",
    "audio.sample_rate",
)
RESTART = "systemctl restart birdd"
Step = Tuple[Optional[Callable[[BirddConfig], None]], str, Tuple[str, ...], Type[Exception], str]


def changed_keys(old: Any, new: Any, prefix: str = "") -> List[str]:
    """The dotted keys whose values differ between two ``model_dump(mode='json')`` trees; a
    list or a value that is a mapping on one side only is one key."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys: List[str] = []
        for name in sorted(set(old) | set(new)):
            keys += changed_keys(old.get(name), new.get(name), f"{prefix}{name}.")
        return keys
    return [] if old == new else [prefix.rstrip(".")]


def split_live(
    keys: List[str], mqtt_live: bool, inputs_live: bool = False, clips_live: bool = False
) -> Tuple[List[str], List[str]]:
    """``keys`` as (applied live, needing a restart). ``mqtt.*`` is live when MQTT is on and
    stays on (``mqtt_live``): the publisher reconnects with the new block; turning MQTT on or
    off changes how long SQLite keeps rows, which is decided at start. The inputs are live
    in ``birdd run`` (``inputs_live``), the clips' settings when the run has a clip stage
    (``clips_live``)."""
    live = {f"postprocess.{name}" for name in LIVE_POSTPROCESS} | set(LIVE_BUDGET)
    if inputs_live:
        live |= set(LIVE_AUDIO)
    if clips_live:
        live |= set(LIVE_CLIPS)
    mqtt_live = mqtt_live and "mqtt.enabled" not in keys
    applied = [
        key for key in keys if _top(key, 2) in live or (mqtt_live and key.startswith("mqtt."))
    ]
    return applied, [key for key in keys if key not in applied]


def applied_config(old: BirddConfig, new: BirddConfig, applied: List[str]) -> BirddConfig:
    """``old`` with the live postprocess and clips fields named in ``applied``, and the whole
    ``mqtt`` block when one of its keys is there, taken from ``new``."""
    blocks: Dict[str, Any] = {
        block: _fields(getattr(old, block), getattr(new, block), block, applied)
        for block in ("postprocess", "clips", "audio")
    }
    if any(key.startswith("mqtt.") for key in applied):
        blocks["mqtt"] = new.mqtt
    return old.model_copy(update=blocks)


def _fields(old: Any, new: Any, block: str, applied: List[str]) -> Any:
    names = {_top(key, 2).split(".")[1] for key in applied if key.startswith(f"{block}.")}
    return old.model_copy(update={name: getattr(new, name) for name in names})


def _part(config: BirddConfig, block: str, keys: Tuple[str, ...]) -> Any:
    """A config's ``block``, or only its ``keys`` (dotted, ``block.name``)."""
    part = getattr(config, block)
    return tuple(getattr(part, key.split(".")[1]) for key in keys) if keys else part


def _top(key: str, depth: int) -> str:
    return ".".join(key.split(".")[:depth])


class ConfigReload:
    """Reloads on request: ``load`` reads the file and the start's flags again, ``apply``
    swaps in a post-processor for a new postprocess config (raising PostprocessError when it
    cannot be built, e.g. an unknown species), ``reconnect`` (None without MQTT) restarts the
    publisher with a new config's mqtt block, ``rebudget`` hands the housekeeping the clips'
    budget, ``reinput`` (None outside ``birdd run``) changes the inputs to a config's
    (raising SourceError, nothing changed, when one cannot be opened), ``reclip`` (None
    without a clip stage) hands it a config's clips settings (raising ClipsError, nothing
    changed, when they cannot apply to the run)."""

    def __init__(
        self,
        config: BirddConfig,
        load: Callable[[], BirddConfig],
        apply: Callable[[PostprocessConfig], None],
        reconnect: Optional[Callable[[BirddConfig], None]] = None,
        rebudget: Optional[Callable[[BirddConfig], None]] = None,
        reinput: Optional[Callable[[BirddConfig], None]] = None,
        reclip: Optional[Callable[[BirddConfig], None]] = None,
    ) -> None:
        self.config = config
        """The config in effect: what was started with, plus what reloads applied."""
        self._load = load
        self.apply, self.reconnect, self.rebudget = apply, reconnect, rebudget
        self.reinput, self.reclip = reinput, reclip
        """Set once the pipeline and the publisher exist (the polls come after)."""
        self._requested = threading.Event()

    def request(self, *_: Any) -> None:
        """The SIGHUP handler: only a flag."""
        self._requested.set()

    def poll(self) -> None:
        """Reload if asked to since the last call, between RELOADING=1 and READY=1 to
        systemd (READY=1 even when the new config was refused: the old one runs)."""
        if not self._requested.is_set():
            return
        self._requested.clear()
        notify("RELOADING=1")
        try:
            self.reload()
        finally:
            notify("READY=1")

    def _step(
        self,
        target: BirddConfig,
        applied: List[str],
        change: Optional[Callable[[BirddConfig], None]],
        block: str,
        keys: Tuple[str, ...],
        error: Type[Exception],
        refused: str,
    ) -> Tuple[BirddConfig, List[str]]:
        """Hand ``target`` to ``change`` when its ``block`` (or only its ``keys``) differs
        from the running one; when ``change`` raises ``error``, one line and the running
        values stay."""
        if change is None or _part(target, block, keys) == _part(self.config, block, keys):
            return target, applied
        try:
            change(target)
        except error as exc:
            log.error("reload: %s settings: %s", refused, exc)
            return self._kept(target, applied, block, keys)
        return target, applied

    def _kept(
        self, target: BirddConfig, applied: List[str], block: str, keys: Tuple[str, ...] = ()
    ) -> Tuple[BirddConfig, List[str]]:
        """``target`` with the running ``block`` (or only its ``keys``) back, and ``applied``
        without them."""
        running = getattr(self.config, block)
        if keys:
            names = {key.split(".")[1] for key in keys}
            part = getattr(target, block).model_copy(
                update={name: getattr(running, name) for name in names}
            )
        else:
            part, keys = running, (block,)
        kept = target.model_copy(update={block: part})
        return kept, [
            key for key in applied if _top(key, 2) not in keys and _top(key, 1) not in keys
        ]

    def reload(self) -> None:
        try:
            new = self._load()
        except ConfigError as exc:
            log.error("reload refused, still running on the previous config: %s", exc)
            return
        keys = changed_keys(self.config.model_dump(mode="json"), new.model_dump(mode="json"))
        if not keys:
            log.info("reload: the config has not changed")
            return
        applied, restart = split_live(
            keys, self.reconnect is not None, self.reinput is not None, self.reclip is not None
        )
        target = applied_config(self.config, new, applied)
        if target.postprocess != self.config.postprocess:
            try:
                self.apply(target.postprocess)
            except PostprocessError as exc:
                log.error("reload refused, still running on the previous config: %s", exc)
                return
        steps: List[Step] = [
            (self.reconnect, "mqtt", (), ValueError, "mqtt not changed, still on its previous"),
            (self.reinput, "audio", (), SourceError, "inputs not changed, still on their previous"),
            (
                self.reclip,
                "clips",
                LIVE_CLIPS,
                ClipsError,
                "clips not changed, still on their previous",
            ),
        ]
        for step in steps:
            target, applied = self._step(target, applied, *step)
        if self.rebudget is not None and target.clips != self.config.clips:
            self.rebudget(target)
        self.config = target
        log.info("reload: changed %s; applied %s", ", ".join(keys), ", ".join(applied) or "nothing")
        if restart:
            log.warning(
                "reload: %s need a restart (%s); running on the old values for those",
                ", ".join(restart),
                RESTART,
            )
