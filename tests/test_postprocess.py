"""Post-processing: scores → confidences → class filters → detection events."""

from __future__ import annotations

import math
import warnings
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pydantic
import pytest

from birdd.daemon.postprocess import (
    PostprocessConfig,
    PostprocessError,
    PostProcessor,
    default_min_confidence,
)
from birdd.daemon.postprocess.config import LocationConfig
from birdd.daemon.postprocess.location_filter import LocationFilter, align_mask
from birdd.daemon.postprocess.scoring import confidences
from birdd.daemon.records import ScoredWindow, StreamClock, Window
from birdd.engines.models.artifact import ModelArtifact, load_artifact
from birdd.engines.models.labels import Species
from birdd.engines.models.location import LocationModel, birdnet_week

RATE = 100  # a toy model: 3 s windows of 300 samples
WINDOW = 300
START = datetime(2024, 5, 2, 4, 0, tzinfo=timezone.utc)
ROBIN, JUNCO, CHICKADEE, DOG = 0, 1, 2, 3
TOY_SPECIES = [
    Species("Turdus migratorius", "American Robin", "amerob", True),
    Species("Junco hyemalis", "Dark-eyed Junco", "daejun", True),
    Species("Poecile atricapillus", "Black-capped Chickadee", "bkcchi", True),
    Species("Dog", "Dog", "dogdog", False),
]


def toy_artifact(activation: str = "sigmoid") -> ModelArtifact:
    return ModelArtifact(
        path=Path("/nonexistent/toy/toy.tflite"),
        name="toy",
        version="1",
        format="tflite",
        sha256="ab" * 32,
        kind="classifier",
        species=TOY_SPECIES,
        activation=activation,
        sample_rate=RATE,
        window_samples=WINDOW,
    )


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def scored(start, heard, classes=4, valid=WINDOW, channel=0, clock_start=START):
    """A window starting at ``start`` samples whose classes ``heard`` ({index: p}) score p,
    stamped as the windower stamps it with a stream that starts at ``clock_start``."""
    logits = np.full(classes, logit(0.001), dtype=np.float32)
    for index, p in heard.items():
        logits[index] = logit(p)
    clock = StreamClock(clock_start, RATE, "test")
    stamps = clock.utc(start), clock.utc(start + valid)
    samples = np.zeros(WINDOW, np.float32)
    window = Window(start // WINDOW, start, samples, valid, "a.wav", channel, *stamps)
    return ScoredWindow(window, logits)


def processor(live=False, artifact=None, mask=None, **settings):
    config = PostprocessConfig(**settings)
    return PostProcessor(config, artifact or toy_artifact(), "st1", live, mask)


def run(proc, windows):
    """Detections per call: one list per window, then the flush."""
    return [proc.process(w) for w in windows] + [proc.flush()]


def summary(detections):
    return [(d.species_index, d.offset_start, d.offset_end, d.windows) for d in detections]


def all_of(calls):
    return [d for call in calls for d in call]


@pytest.fixture(scope="module")
def birdnet(birdnet_model) -> ModelArtifact:
    return load_artifact(birdnet_model, verify_hash=False)


# --- activation and sensitivity ---------------------------------------------------------


def test_sigmoid_with_sensitivity_matches_the_formula():
    logits = np.array([-3.0, 0.0, 0.5, 2.0], dtype=np.float32)
    for sensitivity in (0.5, 1.0, 1.5):
        expected = 1.0 / (1.0 + np.exp(-sensitivity * logits))
        np.testing.assert_allclose(confidences(logits, "sigmoid", sensitivity), expected, 1e-6)
    assert confidences(np.array([2.0]), "sigmoid", 1.5)[0] == pytest.approx(0.952574, abs=1e-6)


def test_extreme_logits_do_not_overflow_and_activation_none_passes_scores_through():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = confidences(np.array([-1e6, 1e6], dtype=np.float32), "sigmoid", 1.5)
    assert result.tolist() == [0.0, 1.0]
    probs = np.array([0.2, 0.9], dtype=np.float32)
    assert confidences(probs, "none", 1.5).tolist() == probs.tolist()


def test_sensitivity_decides_a_borderline_detection():
    window = scored(0, {ROBIN: 1 / (1 + math.exp(-0.5))})  # logit 0.5: 0.622 at sensitivity 1
    assert all_of(run(processor(min_confidence=0.65), [window])) == []
    (detection,) = all_of(run(processor(min_confidence=0.65, sensitivity=1.5), [window]))
    assert detection.confidence == pytest.approx(1 / (1 + math.exp(-0.75)), abs=1e-6)


def test_activation_none_uses_scores_as_confidences():
    window = ScoredWindow(scored(0, {}).window, np.array([0.8, 0.3, 0, 0], dtype=np.float32))
    detections = all_of(run(processor(artifact=toy_artifact("none"), sensitivity=0.5), [window]))
    assert [(d.species_index, round(d.confidence, 6)) for d in detections] == [(ROBIN, 0.8)]


# --- thresholds and class filters -------------------------------------------------------


def test_default_min_confidence_depends_on_the_mode():
    assert default_min_confidence(live=True) == 0.8
    assert default_min_confidence(live=False) == 0.5
    window = scored(0, {ROBIN: 0.6})
    assert len(all_of(run(processor(live=False), [window]))) == 1
    assert all_of(run(processor(live=True), [window])) == []


def test_species_thresholds_override_min_confidence():
    proc = processor(min_confidence=0.5, species_thresholds={"AMEROB": 0.9, "Dark-eyed Junco": 0.2})
    detections = all_of(run(proc, [scored(0, {ROBIN: 0.8, JUNCO: 0.3, CHICKADEE: 0.6})]))
    assert sorted(d.species_index for d in detections) == [JUNCO, CHICKADEE]


def test_include_reports_only_listed_species_and_exclude_wins():
    window = scored(0, {ROBIN: 0.9, JUNCO: 0.9, CHICKADEE: 0.9})
    proc = processor(include=["turdus migratorius", "Junco hyemalis_Dark-eyed Junco"])
    assert sorted(d.species_index for d in all_of(run(proc, [window]))) == [ROBIN, JUNCO]
    proc = processor(include=["turdus migratorius", "daejun"], exclude=["Dark-eyed junco"])
    assert [d.species_index for d in all_of(run(proc, [window]))] == [ROBIN]
    proc = processor(exclude=["Poecile atricapillus"])
    assert sorted(d.species_index for d in all_of(run(proc, [window]))) == [ROBIN, JUNCO]


@pytest.mark.parametrize(
    "settings, key",
    [
        ({"include": ["Robin"]}, "include"),
        ({"exclude": ["amerob", "Robin"]}, "exclude"),
        ({"species_thresholds": {"Robin": 0.5}}, "species_thresholds"),
    ],
)
def test_unknown_species_is_a_one_line_error_naming_key_and_name(settings, key):
    with pytest.raises(PostprocessError) as caught:
        processor(**settings)
    assert str(caught.value) == (
        f"postprocess.{key}: unknown species 'Robin': use the label, scientific or common "
        "name or eBird code, see 'birdd species'"
    )
    assert isinstance(caught.value, ValueError)


def test_two_names_of_one_species_with_different_thresholds_are_refused():
    with pytest.raises(PostprocessError, match="'amerob' and 'American Robin' name the same"):
        processor(species_thresholds={"amerob": 0.5, "American Robin": 0.6})


def test_non_bird_classes_with_real_birdnet_labels(birdnet):
    index = {sp.label: i for i, sp in enumerate(birdnet.species)}
    dog, voice = index["Dog_Dog"], index["Human vocal_Human vocal"]
    toad, robin = (
        index["Anaxyrus cognatus_Great Plains Toad"],
        index["Turdus migratorius_American Robin"],
    )
    assert sum(not sp.is_bird for sp in birdnet.species) == 101
    heard = {dog: 0.9, voice: 0.9, toad: 0.9, robin: 0.9}
    window = scored(0, heard, classes=birdnet.num_classes)

    def reported(**settings):
        detections = all_of(run(processor(artifact=birdnet, **settings), [window]))
        return {d.species_index: d.species.is_bird for d in detections}

    assert reported() == {robin: True}
    assert reported(non_birds=True) == {dog: False, voice: False, toad: False, robin: True}
    assert reported(include=["dogdog", "American Robin"]) == {dog: False, robin: True}


# --- events -------------------------------------------------------------------------------


def test_consecutive_windows_merge_into_one_event_reported_when_it_closes():
    proc = processor()
    windows = [scored(0, {ROBIN: 0.6}), scored(300, {ROBIN: 0.9}), scored(600, {ROBIN: 0.7})]
    calls = run(proc, [*windows, scored(900, {})])
    assert calls[:3] == [[], [], []]
    (event,) = calls[3]
    assert summary([event]) == [(ROBIN, 0.0, 9.0, 3)]
    assert event.confidence == pytest.approx(0.9, abs=1e-6)
    assert (event.start, event.end) == (START, START + timedelta(seconds=9))
    assert (event.source, event.channel, event.station) == ("a.wav", 0, "st1")
    assert event.model == {"name": "toy", "version": "1", "sha256": "ab" * 32}
    assert event.species.code == "amerob" and len(event.id) == 32


def test_overlapping_windows_merge_and_a_window_inside_the_event_keeps_it_open():
    proc = processor()
    windows = [scored(s, {ROBIN: 0.8} if s < 300 else {}) for s in (0, 150, 300, 450)]
    calls = run(proc, windows)
    assert calls[:3] == [[], [], []]
    assert summary(calls[3]) == [(ROBIN, 0.0, 4.5, 2)]


def test_a_gap_between_detecting_windows_starts_a_new_event():
    calls = run(processor(), [scored(0, {ROBIN: 0.8}), scored(600, {ROBIN: 0.8})])
    assert summary(calls[1]) == [(ROBIN, 0.0, 3.0, 1)]
    assert summary(calls[2]) == [(ROBIN, 6.0, 9.0, 1)]


def test_max_event_s_reports_a_long_event_and_continues_even_under_hold_down():
    windows = [scored(300 * i, {ROBIN: 0.9}) for i in range(5)]
    for live in (False, True):
        calls = run(processor(live=live, max_event_s=9), windows)
        assert [summary(call) for call in calls] == [
            [],
            [],
            [(ROBIN, 0.0, 9.0, 3)],
            [],
            [],
            [(ROBIN, 9.0, 15.0, 2)],
        ]


def test_hold_down_drops_a_repeat_within_the_interval_in_live_mode_only():
    # the robin flickers: windows 0, 2 and 6 (0-3 s, 6-9 s, 18-21 s); the junco sings at 6-9 s
    heard = {0: {ROBIN: 0.9}, 2: {ROBIN: 0.9, JUNCO: 0.9}, 6: {ROBIN: 0.9}}
    windows = [scored(300 * i, heard.get(i, {})) for i in range(8)]
    live = all_of(run(processor(live=True, min_confidence=0.5), windows))
    assert summary(live) == [(ROBIN, 0.0, 3.0, 1), (JUNCO, 6.0, 9.0, 1), (ROBIN, 18.0, 21.0, 1)]
    simulate = all_of(run(processor(live=False), windows))
    assert [d.offset_start for d in simulate if d.species_index == ROBIN] == [0.0, 6.0, 18.0]
    shorter = all_of(run(processor(live=True, min_confidence=0.5, hold_down_s=3), windows))
    assert [d.offset_start for d in shorter if d.species_index == ROBIN] == [0.0, 6.0, 18.0]


def test_per_window_reports_every_window_at_once_without_merge_or_hold_down():
    windows = [scored(300 * i, {ROBIN: 0.9}) for i in range(3)]
    calls = run(processor(live=True, per_window=True), windows)
    assert [summary(call) for call in calls] == [
        [(ROBIN, 0.0, 3.0, 1)],
        [(ROBIN, 3.0, 6.0, 1)],
        [(ROBIN, 6.0, 9.0, 1)],
        [],
    ]
    unmerged = all_of(run(processor(live=True, merge=False), windows))
    assert summary(unmerged) == [(ROBIN, 0.0, 3.0, 1)]  # hold-down still on without merge


def test_flush_reports_open_events_by_start_then_confidence():
    proc = processor()
    proc.process(scored(0, {ROBIN: 0.8, JUNCO: 0.95}))
    proc.process(scored(300, {ROBIN: 0.8, JUNCO: 0.95, CHICKADEE: 0.99}))
    flushed = proc.flush()
    assert [d.species_index for d in flushed] == [JUNCO, ROBIN, CHICKADEE]
    assert summary(flushed)[0] == (JUNCO, 0.0, 6.0, 2)
    assert proc.flush() == []


def test_the_zero_padded_final_window_ends_at_the_end_of_the_file():
    windows = [scored(0, {ROBIN: 0.8}), scored(300, {ROBIN: 0.8}, valid=120)]
    (event,) = all_of(run(processor(), windows))
    assert (event.offset_end, event.end) == (4.2, START + timedelta(seconds=4.2))


def test_events_are_dated_by_their_windows_stamps_across_a_clock_reanchor():
    """A live clock re-anchored between two windows (the device came back an hour later): the
    merged event starts at its first window's stamp and ends at its last window's end stamp."""
    later = START + timedelta(hours=1)
    windows = [scored(0, {ROBIN: 0.8}), scored(300, {ROBIN: 0.9}, clock_start=later)]
    windows.append(scored(450, {ROBIN: 0.8}, valid=100, clock_start=later))  # ends inside it
    (event,) = all_of(run(processor(), windows))
    assert summary([event]) == [(ROBIN, 0.0, 6.0, 3)]
    assert (event.start, event.end) == (START, later + timedelta(seconds=6))


def test_channels_of_one_source_keep_separate_events():
    windows = [scored(0, {ROBIN: 0.8}, channel=0), scored(0, {}, channel=1)]
    windows += [scored(300, {ROBIN: 0.8}, channel=0), scored(300, {ROBIN: 0.8}, channel=1)]
    detections = all_of(run(processor(), windows))
    assert sorted((d.channel, d.offset_start, d.windows) for d in detections) == [
        (0, 0.0, 2),
        (1, 3.0, 1),
    ]


# --- location and week ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "day, week",
    [
        ((1, 1), 1),
        ((1, 7), 1),
        ((1, 8), 2),
        ((1, 28), 4),
        ((1, 31), 4),
        ((5, 22), 20),
        ((2, 29), 8),
        ((12, 31), 48),
    ],
)
def test_birdnet_week_from_date(day, week):
    assert birdnet_week(date(2024, *day)) == week


def test_location_week_must_be_minus_one_or_1_to_48():
    for week in (-1, 1, 48, None):
        assert LocationConfig(lat=1, lon=2, week=week).week == week
    for week in (0, 49, -2):
        with pytest.raises(pydantic.ValidationError):
            LocationConfig(lat=1, lon=2, week=week)
    with pytest.raises(pydantic.ValidationError):
        PostprocessConfig(species_thresholds={"amerob": 1.5})
    with pytest.raises(pydantic.ValidationError):
        PostprocessConfig(min_confidance=0.5)


def test_a_location_mask_drops_classes_unless_include_names_them():
    mask = np.array([True, False, True, True])
    window = scored(0, {ROBIN: 0.9, JUNCO: 0.9})
    assert [d.species_index for d in all_of(run(processor(mask=mask), [window]))] == [ROBIN]
    named = processor(mask=mask, include=["daejun", "amerob"])
    assert sorted(d.species_index for d in all_of(run(named, [window]))) == [ROBIN, JUNCO]


def test_the_location_mask_never_drops_non_birds():
    mask = np.array([True, True, True, False])  # the range model gives the dog ~0
    window = scored(0, {DOG: 0.9})
    found = all_of(run(processor(mask=mask, non_birds=True), [window]))
    assert [d.species_index for d in found] == [DOG]


class WeekModel:
    """A stand-in location model that expects the junco only in week 20."""

    species = TOY_SPECIES

    def __init__(self):
        self.weeks = []

    def species_mask(self, lat, lon, week, threshold):
        self.weeks.append(week)
        return np.array([True, week == 20, True, True])


def test_location_filter_follows_the_calendar_and_computes_each_week_once():
    model = WeekModel()
    follow = LocationFilter(LocationConfig(lat=42.5, lon=-76.45), model, TOY_SPECIES)
    may_22 = datetime(2024, 5, 22, 23, tzinfo=timezone.utc)
    assert follow.week_of(may_22) == 20
    assert follow.week_of(may_22 + timedelta(days=7)) == 20  # May 29: 4th week of May
    assert follow.week_of(may_22 + timedelta(days=10)) == 21  # June 1
    assert follow.mask(20).tolist() == [True, True, True, True]
    assert follow.mask(20) is follow.mask(20) and model.weeks == [20]
    fixed = LocationFilter(LocationConfig(lat=42.5, lon=-76.45, week=-1), model, TOY_SPECIES)
    assert fixed.week_of(may_22) == -1


def test_align_mask_matches_classes_by_scientific_name_and_keeps_unknown_ones():
    mask_species = [TOY_SPECIES[CHICKADEE], TOY_SPECIES[ROBIN]]
    aligned = align_mask(np.array([False, True]), mask_species, TOY_SPECIES)
    assert aligned.tolist() == [True, True, False, True]


def test_real_location_model_near_ithaca_in_may(birdnet_model):
    model = LocationModel()
    probabilities = model.probabilities(42.5, -76.45, 20)
    top = int(np.argmax(probabilities))
    assert model.species[top].common == "American Robin"
    assert probabilities[top] == pytest.approx(0.984, abs=1e-3)
    assert int(model.species_mask(42.5, -76.45, 20, 0.03).sum()) == 132
    assert int(model.species_mask(42.5, -76.45, -1, 0.03).sum()) == 255


def test_processor_loads_the_location_model_beside_birdnet_and_uses_the_audio_week(birdnet):
    index = {sp.scientific: i for i, sp in enumerate(birdnet.species)}
    robin, tawny_owl = index["Turdus migratorius"], index["Strix aluco"]
    may_22 = datetime(2024, 5, 22, tzinfo=timezone.utc)
    heard = {robin: 0.9, tawny_owl: 0.9}
    window = scored(0, heard, classes=birdnet.num_classes, clock_start=may_22)
    where = {"lat": 42.5, "lon": -76.45}
    proc = processor(artifact=birdnet, location=where)
    assert [d.species_index for d in all_of(run(proc, [window]))] == [robin]
    proc = processor(artifact=birdnet, location=where, include=["Strix aluco"])
    assert [d.species_index for d in all_of(run(proc, [window]))] == [tawny_owl]


def test_location_without_a_location_model_beside_the_classifier_is_an_error():
    with pytest.raises(PostprocessError, match=r"postprocess\.location: model toy has no location"):
        processor(location={"lat": 1.0, "lon": 2.0})
