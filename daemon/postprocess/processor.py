"""The post-processing stage: scored windows in, detection events out."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Dict, List, Optional, Tuple

import numpy as np

from birdd.daemon.postprocess.config import PostprocessConfig
from birdd.daemon.postprocess.errors import PostprocessError
from birdd.daemon.postprocess.events import Event, EventTracker
from birdd.daemon.postprocess.gate import Gate, GateCounts
from birdd.daemon.postprocess.location_filter import LocationFilter
from birdd.daemon.postprocess.scoring import confidences
from birdd.daemon.postprocess.selection import NEVER_REPORTED, select_classes
from birdd.daemon.records import Channel, Detection, ScoredWindow, new_detection_id
from birdd.engines.errors import EngineError
from birdd.engines.models.artifact import ModelArtifact
from birdd.engines.models.location import LocationModel, location_model_beside

StreamKey = Tuple[str, Channel]
log = logging.getLogger("birdd")


class PostProcessor:
    """Applies activation and sensitivity, class thresholds and filters, and turns detecting
    windows into events, kept apart per (source, channel). Times come from the windows' UTC
    stamps.

    ``location_mask`` (bool per class) replaces the location model: when it is None and
    ``config.location`` is set, the location model installed beside the classifier is loaded.
    With ``config.gate``, windows the gate calls no-bird lose their bird classes
    (``gate_counts`` counts them); the windows then need their embeddings
    (``needs_embeddings``).
    """

    def __init__(
        self,
        config: PostprocessConfig,
        artifact: ModelArtifact,
        station: str,
        live: bool,
        location_mask: Optional[np.ndarray] = None,
    ) -> None:
        self._config = config
        self._artifact = artifact
        self._model_identity = artifact.identity()
        self._station = station
        self._rate = artifact.sample_rate
        self._live = live
        selection = select_classes(config, artifact.species, live, artifact.thresholds)
        _log_model_thresholds(selection.thresholds[selection.from_model])
        # The location model is a range model for birds: it never drops what it does not map
        # (include-listed classes and non-birds, which non_birds or include let through).
        self._kept_by_location = selection.named | ~np.array([s.is_bird for s in artifact.species])
        self._thresholds = selection.thresholds
        self._location: Optional[LocationFilter] = None
        if location_mask is not None:
            self._thresholds = self._masked(self._checked_mask(location_mask))
        elif config.location is not None:
            self._location = LocationFilter(
                config.location, self._location_model(), artifact.species
            )
        self._is_bird = np.array([s.is_bird for s in artifact.species], dtype=bool)
        self._gate = Gate(config.gate.model, config.gate.threshold) if config.gate else None
        self.gate_counts: Optional[GateCounts] = GateCounts() if self._gate else None
        self._week: Optional[int] = None
        self._week_thresholds = self._thresholds
        self._trackers: Dict[StreamKey, EventTracker] = {}

    def process(self, scored: ScoredWindow) -> List[Detection]:
        """Score one window; return the events it closed (by start, then confidence desc)."""
        window = scored.window
        if scored.scores.shape != (self._artifact.num_classes,):
            raise PostprocessError(
                f"scores of shape {scored.scores.shape} for a model with "
                f"{self._artifact.num_classes} classes"
            )
        conf = confidences(scored.scores, self._artifact.activation, self._config.sensitivity)
        classes = np.flatnonzero(conf >= self._thresholds_at(window.start_utc))
        if self._gate is not None:
            classes = self._gated(scored, classes)
        tracker = self._tracker((window.source, window.channel))
        events = tracker.update(window, classes, conf[classes])
        return self._detections(events, window.source, window.channel)

    def take_over(self, previous: PostProcessor) -> None:
        """Continue the events ``previous`` has open (and its gate's counts): a config
        reload swaps post-processors between windows without cutting an event in two."""
        self._trackers = previous._trackers
        if previous.gate_counts is not None and self.gate_counts is not None:
            self.gate_counts = previous.gate_counts

    @property
    def needs_embeddings(self) -> bool:
        return self._gate is not None

    def _gated(self, scored: ScoredWindow, classes: np.ndarray) -> np.ndarray:
        """``classes`` without the birds when the gate calls the window no-bird."""
        assert self._gate is not None and self.gate_counts is not None
        if scored.embedding is None:
            raise PostprocessError("postprocess.gate needs the window's embedding: none given")
        counts = self.gate_counts
        counts.windows += 1
        if self._gate.is_bird(scored.embedding):
            return classes
        counts.no_bird_windows += 1
        birds = self._is_bird[classes]
        counts.birds_dropped += int(birds.sum())
        return classes[~birds]

    def flush(self) -> List[Detection]:
        """End of stream: report every event still open."""
        detections: List[Detection] = []
        for (source, channel), tracker in self._trackers.items():
            detections += self._detections(tracker.flush(), source, channel)
        return sorted(detections, key=_report_order)

    def flush_stream(self, source: str, channel: Channel) -> List[Detection]:
        """A stream ended while the others go on (its input removed or restarted by a
        reload): report its open events and forget it."""
        tracker = self._trackers.pop((source, channel), None)
        if tracker is None:
            return []
        return sorted(self._detections(tracker.flush(), source, channel), key=_report_order)

    def _location_model(self) -> LocationModel:
        path = location_model_beside(self._artifact.path)
        if path is None:
            raise PostprocessError(
                f"postprocess.location: model {self._artifact.name} has no location model "
                "beside it: remove postprocess.location or install 'birdd models install birdnet'"
            )
        try:
            return LocationModel(path)
        except EngineError as exc:
            raise PostprocessError(f"postprocess.location: {exc}") from exc

    def _checked_mask(self, mask: np.ndarray) -> np.ndarray:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (self._artifact.num_classes,):
            raise PostprocessError(
                f"location mask of shape {mask.shape} for a model with "
                f"{self._artifact.num_classes} classes"
            )
        return mask

    def _masked(self, location_mask: np.ndarray) -> np.ndarray:
        """Thresholds with the birds the location drops (and include does not name) removed."""
        kept = location_mask | self._kept_by_location
        return np.where(kept, self._thresholds, NEVER_REPORTED).astype(np.float32)

    def _thresholds_at(self, moment: datetime) -> np.ndarray:
        if self._location is None:
            return self._thresholds
        week = self._location.week_of(moment)
        if week != self._week:
            self._week = week
            self._week_thresholds = self._masked(self._location.mask(week))
        return self._week_thresholds

    def _tracker(self, key: StreamKey) -> EventTracker:
        if key not in self._trackers:
            self._trackers[key] = self._new_tracker()
        return self._trackers[key]

    def _new_tracker(self) -> EventTracker:
        config = self._config
        rate = self._rate
        hold_down = self._live and not config.per_window
        return EventTracker(
            merge=config.merge and not config.per_window,
            max_event_samples=round(config.max_event_s * rate),
            hold_down_samples=round(config.hold_down_s * rate) if hold_down else None,
        )

    def _detections(self, events: List[Event], source: str, channel: Channel) -> List[Detection]:
        rate = self._rate
        detections = [
            Detection(
                id=new_detection_id(),
                species=self._artifact.species[event.class_index],
                species_index=event.class_index,
                confidence=event.confidence,
                offset_start=event.start / rate,
                offset_end=event.end / rate,
                start=event.start_utc,
                end=event.end_utc,
                source=source,
                channel=channel,
                station=self._station,
                model=dict(self._model_identity),
                windows=event.windows,
            )
            for event in events
        ]
        return sorted(detections, key=_report_order)


def _log_model_thresholds(thresholds: np.ndarray) -> None:
    if thresholds.size:
        log.info(
            "postprocess: the model's own thresholds for %d class(es) (%.2f-%.2f)",
            thresholds.size,
            thresholds.min(),
            thresholds.max(),
        )


def _report_order(detection: Detection) -> Tuple[float, float]:
    return detection.offset_start, -detection.confidence
