"""The pipeline's part of the ``…/stats`` message, read from any thread."""

from __future__ import annotations

import queue
from dataclasses import asdict
from typing import Any, Dict, List, Optional, Protocol

from birdd.daemon.pipeline.capture import SourceStage, Stream
from birdd.daemon.pipeline.inference import InferenceStage
from birdd.daemon.sinks.fanout import SinkFanout


class Observed(Protocol):
    """What of the pipeline the figures come from."""

    stats: Any
    stages: List[SourceStage]
    inference: InferenceStage
    fanout: SinkFanout
    clips: Any

    @property
    def windows(self) -> queue.Queue: ...

    @property
    def streams(self) -> List[Stream]: ...


def pipeline_health(pipeline: Observed) -> Dict[str, Any]:
    """``gate`` only with a bird / no-bird gate; the level and silence of the first stream
    (none for the moment an only input is being restarted by a reload)."""
    stats, streams = pipeline.stats, pipeline.streams
    first = streams[0].level if streams else None
    gate = {} if stats.gate is None else {"gate": asdict(stats.gate)}
    return {
        "audio_seconds": round(stats.audio_seconds, 3),
        "windows": stats.windows,
        "detections": stats.detections,
        "realtime_factor": round(stats.realtime_factor, 2),
        "inference_latency_ms": pipeline.inference.latencies.percentiles_ms(),
        "queue_depths": {"windows": pipeline.windows.qsize(), **pipeline.fanout.queue_depths()},
        "dropped": {
            "windows": stats.windows_dropped,
            "windows_unscored": stats.windows_unscored,
            "overwritten_samples": sum(stream.ring.overwritten for stream in streams),
        },
        "input_level_dbfs": _rounded(first.level_dbfs if first else None),
        "silence_s": round(first.silence_s if first else 0.0, 3),
        "sources": [_source_health(stage) for stage in pipeline.stages],
        "gaps": {
            "count": len(stats.gaps),
            "seconds": round(sum(gap.seconds for gap in stats.gaps), 3),
        },
        **gate,
        **(pipeline.clips.stats() if pipeline.clips else {}),
    }


def _source_health(stage: SourceStage) -> Dict[str, Any]:
    return {
        "source": stage.source.name,
        "status": stage.source.status(),
        "channels": [
            {
                "channel": stream.channel,
                "input_level_dbfs": _rounded(stream.level.level_dbfs),
                "silence_s": round(stream.level.silence_s, 3),
            }
            for stream in stage.streams
        ],
    }


def _rounded(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 2)
