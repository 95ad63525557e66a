"""Detection clips without the model: the span arithmetic, the ring's hold, the clip stage's
decisions (post-roll wait, privacy guard, backlog), the writer's files, the config, the SQLite
columns and the message schema. The clips cut here come from a real ring filled with a known
signal and are read back from the real FLAC files."""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import List

import numpy as np
import pytest
import soundfile

from birdd.daemon.clips.config import ClipsConfig
from birdd.daemon.clips.privacy import ClipsError, SpeechGuard
from birdd.daemon.clips.spans import HeardLog, clip_name, clip_span, ring_seconds_needed
from birdd.daemon.clips.stage import ClipSettings, ClipStage, check_folder, ring_seconds
from birdd.daemon.clips.writer import QUEUE_SIZE, ClipCounts, ClipJob, ClipWriter, RingHold
from birdd.daemon.config import ConfigError, build_config
from birdd.daemon.mqtt.messages import load_schema_check
from birdd.daemon.mqtt.payload import detection_payload
from birdd.daemon.pipeline.ring import RingBuffer
from birdd.daemon.records import ClipInfo, Detection, ScoredWindow, Window
from birdd.daemon.store.sqlite_store import SQLiteStore
from birdd.engines.models.labels import Species

RATE = 48000
WINDOW = 3 * RATE
START = datetime(2024, 5, 2, 4, 0, 0, tzinfo=timezone.utc)
ROBIN = Species("Turdus migratorius", "American Robin", "amerob", True)
HUMANS = [Species(name, name, None, False) for name in ("Human vocal", "Human whistle")]
SPECIES = [ROBIN, *HUMANS]
MODEL = {"name": "BirdNET", "version": "2.4", "sha256": "0" * 64}
SOURCE = "dawn.wav"


def detection(start_s: float, end_s: float, number: int = 1) -> Detection:
    return Detection(
        id=f"{number:032x}",
        species=ROBIN,
        species_index=0,
        confidence=0.9,
        offset_start=start_s,
        offset_end=end_s,
        start=START + timedelta(seconds=start_s),
        end=START + timedelta(seconds=end_s),
        source=SOURCE,
        channel="mix",
        station="garden",
        model=dict(MODEL),
    )


def known_signal(seconds: float) -> np.ndarray:
    """Every sample a distinct multiple of 1/32768: 16-bit clips hold it exactly."""
    steps = np.arange(round(seconds * RATE)) % 65536 - 32768
    return (steps / 32768).astype(np.float32)


def scored(index: int, speech: bool = False) -> ScoredWindow:
    """Window ``index`` (3 s, no overlap) with a robin and, if ``speech``, a human voice."""
    start = index * WINDOW
    window = Window(
        index,
        start,
        np.zeros(WINDOW, np.float32),
        WINDOW,
        SOURCE,
        "mix",
        START + timedelta(seconds=3 * index),
        START + timedelta(seconds=3 * index + 3),
    )
    logits = np.array([4.0, 5.0 if speech else -10.0, -10.0], np.float32)
    return ScoredWindow(window, logits)


class Station:
    """A clip stage over a ring holding ``known_signal(30)``, with its writer, as the
    pipeline wires them; ``published`` is what reached the sinks."""

    def __init__(self, folder: Path, live: bool = False, **clips: object) -> None:
        self.config = ClipsConfig(enabled=True, dir=folder, **clips)
        self.signal = known_signal(30)
        self.ring = RingBuffer(len(self.signal), drop_oldest=live)
        self.published: List[Detection] = []
        self.counts = ClipCounts()
        self.writer = ClipWriter(folder, self.config.format, RATE, self.publish, live, self.counts)
        guard = SpeechGuard(SPECIES, "sigmoid", 1.0, 0.1, "test model")
        settings = ClipSettings(self.config, max_event_s=15.0, sensitivity=1.0)
        rings = {(SOURCE, "mix"): self.ring}
        self.stage = ClipStage(settings, guard, rings, RATE, WINDOW, self.writer, self.publish)
        self.ring.write(self.signal)
        self.ring.close()

    def publish(self, detections) -> None:
        self.published.extend(detections)

    def finish(self, flushed=()) -> None:
        """Flush (``flushed``: the events post-processing flushes) and let the writer, in its
        own thread as in the pipeline, write everything queued."""
        thread = threading.Thread(target=self.writer.run)
        thread.start()
        self.stage.flush(list(flushed))
        self.stage.close()
        thread.join(10)
        assert not thread.is_alive()

    def clip_samples(self, found: Detection) -> np.ndarray:
        assert found.clip is not None
        audio, rate = soundfile.read(found.clip.path, dtype="float32")
        assert rate == RATE
        return audio


# --- spans, names, the heard log ----------------------------------------------------------------


def test_a_span_takes_the_pre_and_post_roll_in_samples_and_stops_at_zero():
    span = clip_span(detection(6.0, 9.0), RATE, pre_s=1.5, post_s=2.0)
    assert (span.start, span.end, span.event_start) == (4.5 * RATE, 11 * RATE, 6 * RATE)
    early = clip_span(detection(0.5, 3.5), RATE, pre_s=1.5, post_s=0.0)
    assert (early.start, early.end) == (0, 3.5 * RATE)


def test_a_clip_is_named_by_its_first_samples_day_and_time_species_and_id():
    found = detection(6.0, 9.0, number=7)
    span = clip_span(found, RATE, pre_s=1.5, post_s=1.0)
    assert clip_name(found, span, RATE, "flac") == (
        f"2024-05-02/20240502T040004.500Z_amerob_{7:032x}.flac"
    )


def test_the_heard_log_answers_for_overlapping_windows_only():
    heard = HeardLog()
    for index, level in enumerate([0.01, 0.6, 0.02]):
        heard.add(index * WINDOW, (index + 1) * WINDOW, level)
    assert heard.loudest(0, WINDOW) == 0.01  # touching the next window is not overlapping
    assert heard.loudest(WINDOW - 1, WINDOW + 1) == 0.6
    assert heard.loudest(10 * WINDOW, 11 * WINDOW) is None
    heard.forget_before(2 * WINDOW)
    assert len(heard) == 1 and heard.loudest(0, 3 * WINDOW) == 0.02


def test_the_ring_is_sized_from_the_clips_and_the_longest_event():
    settings = ClipSettings(ClipsConfig(enabled=True, pre_s=2, post_s=3), 60.0, 1.0)
    needed = ring_seconds_needed(2, 3, 60, 3, 3)
    assert needed == 2 + 60 + 3 + 3 + 3 + 3 * 33
    assert ring_seconds(settings, 120, RATE, WINDOW, WINDOW) == needed
    assert ring_seconds(settings, 600, RATE, WINDOW, WINDOW) == 600
    assert ring_seconds(None, 120, RATE, WINDOW, WINDOW) == 120
    with pytest.raises(ClipsError, match=r"lower postprocess\.max_event_s"):
        ring_seconds(replace(settings, max_event_s=3600.0), 120, RATE, WINDOW, WINDOW)


# --- the ring: a second reader's hold ---------------------------------------------------------


def test_a_waiting_writer_keeps_what_a_second_reader_holds():
    ring = RingBuffer(10, drop_oldest=False)
    ring.hold(0)
    ring.write(np.arange(10, dtype=np.float32))
    ring.release(10)  # the windower is done with them; the clip reader is not
    writer = threading.Thread(target=ring.write, args=(np.arange(10, 15, dtype=np.float32),))
    writer.start()
    writer.join(0.3)
    assert writer.is_alive() and ring.written == 10
    ring.hold(5)
    writer.join(5)
    assert not writer.is_alive() and ring.written == 15
    out = np.zeros(10, np.float32)
    assert ring.read_span(5, out) == (5, 15)
    assert out.tolist() == list(range(5, 15))


def test_an_overwriting_writer_ignores_the_hold_and_the_reader_sees_the_loss():
    ring = RingBuffer(10, drop_oldest=True)
    ring.hold(0)
    ring.write(np.arange(25, dtype=np.float32))
    out = np.zeros(10, np.float32)
    assert ring.read_span(10, out) == (15, 20)


# --- the stage and the writer -------------------------------------------------------------------


def test_a_clip_waits_for_its_post_roll_and_holds_the_events_audio_exactly(tmp_path):
    station = Station(tmp_path, pre_s=1.5, post_s=2.0)
    found = detection(6.0, 9.0)
    for index in range(3):
        station.stage.process(scored(index), [])
    station.stage.process(scored(3), [found])  # the window that closed the event
    station.stage.close()
    station.writer.run()
    assert station.published == []  # 11 s not yet heard: the window at 9-12 s is not enough
    station = Station(tmp_path, pre_s=1.5, post_s=2.0)
    for index in range(5):
        station.stage.process(scored(index), [found] if index == 3 else [])
    station.finish()
    [written] = station.published
    assert written.clip is not None and written.clip.duration_s == 6.5
    assert Path(written.clip.path).parent.parent == tmp_path
    samples = station.clip_samples(written)
    np.testing.assert_array_equal(samples, station.signal[round(4.5 * RATE) : 11 * RATE])
    assert station.counts.written == 1 and station.ring.held is not None


def test_clips_at_the_ends_of_the_stream_are_cut_short(tmp_path):
    station = Station(tmp_path, pre_s=2.0, post_s=2.0)
    first, last = detection(0.0, 3.0, 1), detection(27.0, 30.0, 2)
    for index in range(10):
        station.stage.process(scored(index), [first] if index == 1 else [])
    station.finish([last])
    assert [d.clip.duration_s for d in station.published if d.clip] == [5.0, 5.0]
    np.testing.assert_array_equal(
        station.clip_samples(station.published[1]), station.signal[-5 * RATE :]
    )


def test_no_clip_is_kept_where_a_window_overlapping_it_holds_speech(tmp_path):
    """Speech at 18-21 s: the clip of 21-24 s (20-25 s with its roll) touches it and is not
    kept, though its detection is passed on; the clip of 12-15 s (11-16 s) is kept."""
    station = Station(tmp_path, pre_s=1.0, post_s=1.0)
    near, clean = detection(21.0, 24.0, 1), detection(12.0, 15.0, 2)
    closes = {5: [clean], 8: [near]}
    for index in range(10):
        station.stage.process(scored(index, speech=index == 6), closes.get(index, []))
    station.finish()
    by_id = {d.id: d for d in station.published}
    assert by_id[near.id].clip is None and by_id[clean.id].clip is not None
    assert sorted(p.name for p in tmp_path.rglob("*.flac")) == [
        Path(by_id[clean.id].clip.path).name
    ]
    assert station.stage.stats() == {
        "clips_written": 1,
        "clips_dropped_privacy": 1,
        "clips_dropped_backlog": 0,
        "clips_failed": 0,
        "clips_dropped_disk": 0,
        "detections_dropped_privacy": 0,
    }


def test_detections_within_the_privacy_distance_of_speech_are_dropped(tmp_path):
    station = Station(tmp_path, privacy={"drop_detections_within_s": 3.0})
    near, clean = detection(21.0, 24.0, 1), detection(9.0, 12.0, 2)
    closes = {4: [clean], 8: [near]}
    for index in range(10):
        station.stage.process(scored(index, speech=index == 6), closes.get(index, []))
    station.finish()
    assert [d.id for d in station.published] == [clean.id]  # speech at 18-21 s: 6 s away
    assert station.stage.stats()["detections_dropped_privacy"] == 1


def test_a_live_writer_that_falls_behind_drops_clips_never_detections(tmp_path):
    station = Station(tmp_path, live=True, pre_s=0.0, post_s=0.0)
    many = [detection(3.0, 6.0, number) for number in range(QUEUE_SIZE + 3)]
    station.stage.process(scored(2), many)  # all decided at once; the writer is not running
    assert station.counts.dropped_backlog == 3 and len(station.published) == 3
    assert all(d.clip is None for d in station.published)
    station.finish()
    assert len(station.published) == len(many) and station.counts.written == QUEUE_SIZE


def test_audio_the_ring_overwrote_is_a_dropped_clip(tmp_path):
    ring = RingBuffer(5 * RATE, drop_oldest=True)
    ring.write(known_signal(30))
    counts, published = ClipCounts(), []
    writer = ClipWriter(tmp_path, "wav", RATE, published.extend, True, counts)
    found = detection(6.0, 9.0)
    hold = RingHold(ring)
    hold.keep(6 * RATE)
    writer.submit(ClipJob(found, clip_span(found, RATE, 0.0, 0.0), hold))
    writer.close()
    writer.run()
    assert published == [found] and counts.dropped_backlog == 1 and counts.written == 0


def test_a_clip_that_cannot_be_written_leaves_its_detection_without_one(tmp_path):
    (tmp_path / "clips").mkdir()
    station = Station(tmp_path / "clips", pre_s=0.0, post_s=0.0)
    (tmp_path / "clips" / "2024-05-02").write_text("a file where the day's folder goes")
    station.stage.process(scored(2), [detection(3.0, 6.0)])
    station.finish()
    assert [d.clip for d in station.published] == [None] and station.counts.failed == 1


# --- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "clips, words",
    [
        ({"format": "mp3"}, "clips.format | 'mp3' | Input should be 'flac' or 'wav'"),
        ({"pre_s": -1}, "clips.pre_s | -1 | Input should be greater than or equal to 0"),
        ({"sizes": 1}, "clips.sizes | 1 | unknown key"),
        (
            {"privacy": {"human_threshold": None, "drop_detections_within_s": 2}},
            "drop_detections_within_s needs human_threshold",
        ),
    ],
)
def test_bad_clips_settings_are_one_line_each(clips, words):
    with pytest.raises(ConfigError) as raised:
        build_config({"clips": clips})
    assert len(raised.value.lines) == 1 and words in raised.value.lines[0]


def test_a_model_without_human_classes_cannot_guard_privacy():
    with pytest.raises(ClipsError, match=r"clips\.privacy\.human_threshold: null"):
        SpeechGuard([ROBIN], "sigmoid", 1.0, 0.1, "student")


def test_a_clips_folder_that_cannot_be_made_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ClipsError, match="cannot create it"):
        check_folder(ClipsConfig(enabled=True, dir=tmp_path / "file" / "clips"))


# --- where the clip goes: SQLite and the message ----------------------------------------------

CLIP = ClipInfo("/var/lib/birdd/clips/2024-05-02/x.flac", 6.5, "ab" * 32)


def test_sqlite_stores_the_clips_path_and_duration(tmp_path):
    from test_sinks import run_info

    with SQLiteStore(tmp_path / "db.sqlite") as store:
        store.begin_run(run_info())
        store.add_detections("run-1", [replace(detection(6, 9, 1), clip=CLIP), detection(9, 12, 2)])
    with sqlite3.connect(str(tmp_path / "db.sqlite")) as conn:
        rows = conn.execute(
            "SELECT clip_path, clip_duration_s, record_json FROM detections ORDER BY rowid"
        ).fetchall()
    assert rows[0][:2] == (CLIP.path, 6.5) and rows[1][:2] == (None, None)
    assert json.loads(rows[0][2])["clip"] == {
        "path": CLIP.path,
        "duration_s": 6.5,
        "sha256": "ab" * 32,
    }
    assert "clip" not in json.loads(rows[1][2])


def test_the_schema_takes_a_clip_object_a_path_string_or_none():
    check = load_schema_check()  # the hub's check: the schema file the hub reads
    plain = json.loads(detection_payload(json.dumps(detection(6, 9).to_record())))
    with_clip = {**plain, "clip": CLIP.to_json()}
    assert check(plain) is None and check(with_clip) is None
    assert check({**plain, "clip": "https://example.org/x.flac"}) is None
    assert check({**plain, "clip": None}) is None
    assert check({**plain, "clip": {"path": "x.flac"}}) is not None
    assert check({**plain, "clip": {**CLIP.to_json(), "duration_s": -1}}) is not None


def test_a_retune_applies_to_the_clips_decided_after_it(tmp_path):
    """A reload at window 4 turns the speech guard off and asks for 0.5 s before, none after,
    as wav in another folder: the clip of 21-24 s next to speech at 18-21 s is now kept, as
    20.5-24 s; the clip of 3-6 s, decided before, keeps its 2-7 s (written after: new folder)."""
    station = Station(tmp_path / "a", pre_s=1.0, post_s=1.0)
    early, near = detection(3.0, 6.0, 1), detection(21.0, 24.0, 2)
    closes = {2: [early], 8: [near]}
    moved = ClipsConfig(enabled=True, dir=tmp_path / "b", pre_s=0.5, post_s=0.0, format="wav")
    for index in range(10):
        if index == 4:
            station.stage.retune(ClipSettings(moved, max_event_s=15.0, sensitivity=1.0), None)
        station.stage.process(scored(index, speech=index == 6), closes.get(index, []))
    station.finish()
    clips = {found.id: found.clip for found in station.published}
    assert [clips[early.id].duration_s, clips[near.id].duration_s] == [5.0, 3.5]
    assert all(Path(clip.path).suffix == ".wav" for clip in clips.values())
    assert sorted(path.name for path in (tmp_path / "b").rglob("*.wav")) == sorted(
        Path(clip.path).name for clip in clips.values()
    )
