"""The ``…/stats`` figures as Prometheus metrics: one collector that reads the same dict the
MQTT stats message is built from (``station_stats``), at every scrape, so the two never
disagree and nothing is counted twice. Counts "in this run" are counters (a restart is a
counter reset, which Prometheus' ``rate()`` handles); levels and backlogs are gauges."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from birdd.daemon.health.liveness import Liveness

Fields = Callable[[], Dict[str, Any]]

COUNTERS: List[Tuple[Sequence[str], str, str]] = [
    (("audio_seconds",), "birdd_audio_seconds", "Seconds of audio analysed, all inputs"),
    (("windows",), "birdd_windows", "Windows scored"),
    (("detections",), "birdd_detections", "Detections handed to the sinks"),
    (("dropped", "windows"), "birdd_windows_dropped", "Windows dropped: the engine fell behind"),
    (("dropped", "windows_unscored"), "birdd_windows_unscored", "Windows the engine failed on"),
    (
        ("dropped", "overwritten_samples"),
        "birdd_overwritten_samples",
        "Samples overwritten in the ring buffer before analysis",
    ),
    (("gaps", "count"), "birdd_gaps", "Gaps in the audio (outages, engine failures)"),
    (("gaps", "seconds"), "birdd_gap_seconds", "Seconds of audio lost in gaps"),
    (("gate", "windows"), "birdd_gate_windows", "Windows the bird / no-bird gate judged"),
    (("gate", "no_bird_windows"), "birdd_gate_no_bird_windows", "Windows the gate called no-bird"),
    (("gate", "birds_dropped"), "birdd_gate_birds_dropped", "Bird scores the gate dropped"),
    (("clips_written",), "birdd_clips_written", "Clips saved"),
    (("clips_dropped_privacy",), "birdd_clips_dropped_privacy", "Clips not kept: people heard"),
    (("clips_dropped_backlog",), "birdd_clips_dropped_backlog", "Clips dropped: writer behind"),
    (("clips_failed",), "birdd_clips_failed", "Clips that could not be written"),
    (("clip_uploads", "uploaded"), "birdd_clips_uploaded", "Clips the hub took"),
    (("clip_uploads", "failed"), "birdd_clip_uploads_failed", "Clips given up for good"),
    (
        ("detections_dropped_privacy",),
        "birdd_detections_dropped_privacy",
        "Detections dropped: people heard near them",
    ),
]
GAUGES: List[Tuple[Sequence[str], str, str]] = [
    (("uptime_s",), "birdd_uptime_seconds", "Seconds since the daemon started"),
    (("realtime_factor",), "birdd_realtime_factor", "Audio seconds per wall-clock second"),
    (("outbox_backlog",), "birdd_outbox_backlog", "Detections not yet acknowledged by the broker"),
    (("clip_uploads", "waiting"), "birdd_clip_uploads_waiting", "Clips not yet on the hub"),
    (("disk_free_bytes",), "birdd_disk_free_bytes", "Free bytes on the database's file system"),
    (("cpu_temp_c",), "birdd_cpu_temperature_celsius", "The first readable thermal zone"),
]


def import_prometheus() -> Any:
    """prometheus_client, or a one-line error naming the extra that installs it."""
    try:
        import prometheus_client
        import prometheus_client.core
        import prometheus_client.exposition
    except ImportError:
        raise ValueError(
            "metrics.listen needs prometheus-client: pip install 'birdd[metrics]' "
            "(or unset metrics.listen)"
        ) from None
    return prometheus_client


def lookup(fields: Dict[str, Any], path: Sequence[str]) -> Optional[float]:
    """The number at ``path`` in the stats dict; None where the station has no such field."""
    value: Any = fields
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return None if value is None or isinstance(value, bool) else float(value)


class StatsCollector:
    """A prometheus_client collector over the stats dict and the liveness verdict."""

    def __init__(self, fields: Fields, liveness: Liveness) -> None:
        self.fields, self.liveness = fields, liveness
        self._core = import_prometheus().core

    def collect(self) -> Iterator[Any]:
        fields = self.fields()
        core = self._core
        for path, name, documentation in COUNTERS:
            value = lookup(fields, path)
            if value is not None:
                yield core.CounterMetricFamily(name, documentation, value=value)
        for path, name, documentation in GAUGES:
            value = lookup(fields, path)
            if value is not None:
                yield core.GaugeMetricFamily(name, documentation, value=value)
        yield from self._labelled(fields)
        healthy = self.liveness.check().healthy
        yield core.GaugeMetricFamily(
            "birdd_healthy", "1 while the pipeline is alive (/healthz 200)", value=float(healthy)
        )

    def _labelled(self, fields: Dict[str, Any]) -> Iterator[Any]:
        core = self._core
        info = core.InfoMetricFamily("birdd", "The station and birdd's version")
        info.add_metric([], {"station": fields["station"], "version": fields["version"]})
        yield info
        queues = core.GaugeMetricFamily(
            "birdd_queue_depth", "Windows for the engine, batches per sink", labels=["queue"]
        )
        for queue, depth in fields["queue_depths"].items():
            queues.add_metric([queue], depth)
        yield queues
        yield from self._levels(fields["sources"])
        latency = fields["inference_latency_ms"]
        if latency is not None:
            family = core.GaugeMetricFamily(
                "birdd_inference_latency_seconds",
                "From a window's availability to its scores, over recent windows",
                labels=["quantile"],
            )
            family.add_metric(["0.5"], latency["p50"] / 1000)
            family.add_metric(["0.95"], latency["p95"] / 1000)
            yield family
        if "mqtt_state" in fields:
            connected = float(fields["mqtt_state"] == "connected")
            yield core.GaugeMetricFamily(
                "birdd_mqtt_connected", "1 while connected to the broker", value=connected
            )

    def _levels(self, sources: List[Dict[str, Any]]) -> Iterator[Any]:
        core = self._core
        labels = ["source", "channel"]
        level = core.GaugeMetricFamily(
            "birdd_input_level_dbfs", "RMS level of the last block", labels=labels
        )
        silence = core.GaugeMetricFamily(
            "birdd_silence_seconds", "Seconds of digital silence in a row", labels=labels
        )
        for source in sources:
            for channel in source["channels"]:
                names = [source["source"], str(channel["channel"])]
                if channel["input_level_dbfs"] is not None:
                    level.add_metric(names, channel["input_level_dbfs"])
                silence.add_metric(names, channel["silence_s"])
        yield level
        yield silence
