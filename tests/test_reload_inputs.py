"""SIGHUP changes the inputs of a running `birdd run`: which ones start, stop or restart
(unit), and a real daemon whose stdin input keeps its window sequence while a reload swaps
one live HTTP stream for another (system)."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import pytest
from birdd_testing import THRUSH, recording
from http_streams import StreamServer
from reload_daemon import Daemon, heard, thrush_play, write_config

from birdd.daemon.app.inputs import InputChanges, InputSet
from birdd.daemon.app.reload import split_live
from birdd.daemon.config import AudioConfig

URL_A, URL_B = "http://127.0.0.1:9/a.wav", "http://127.0.0.1:9/b.wav"

# ------------------------------------------------------------------ unit: the diff of two sets


def inputs(*entries: object, **audio: object) -> InputSet:
    return InputSet.of(AudioConfig.model_validate({"inputs": list(entries), **audio}))


def test_added_removed_and_kept_inputs_by_their_entry() -> None:
    changes = inputs("-", URL_A, "USB").diff(inputs("-", URL_B, "USB"))
    assert changes == InputChanges(added=(URL_B,), removed=(URL_A,), kept=("-", "USB"))
    assert changes.describe() == f"added {URL_B}; removed {URL_A}; kept running -, USB"


def test_the_same_inputs_are_no_change() -> None:
    same = inputs("-", URL_A, 2)
    assert not same.diff(inputs("-", URL_A, 2))
    assert not same.diff(inputs("-", URL_A, "2")), "a device index given as text is the same"
    assert not inputs(URL_A, "-").diff(inputs("-", URL_A)), "the order does not matter"


def test_a_setting_restarts_only_the_inputs_opened_with_it() -> None:
    running = inputs("-", URL_A, "USB")
    decoder = running.diff(inputs("-", URL_A, "USB", decoder="pyav"))
    assert decoder.restarted == (URL_A,) and decoder.kept == ("-", "USB")
    rate = running.diff(inputs("-", URL_A, "USB", sample_rate=44100))
    assert rate.restarted == ("USB",) and rate.kept == ("-", URL_A)
    watchdog = running.diff(inputs("-", URL_A, "USB", watchdog_s=9))
    assert watchdog.restarted == (URL_A, "USB") and watchdog.kept == ("-",)


def test_stdin_has_no_setting_a_reload_restarts() -> None:
    assert not inputs("-").diff(inputs("-", block_s=1.0, watchdog_s=9))


def test_inputs_apply_live_in_birdd_run_only() -> None:
    keys = ["audio.inputs", "audio.decoder", "audio.channels", "audio.ring_buffer_s"]
    assert split_live(keys, mqtt_live=False, inputs_live=True) == (keys[:2], keys[2:])
    assert split_live(keys, mqtt_live=False) == ([], keys)


# -------------------------------------- system: stdin keeps its windows while streams swap


def source_rows(daemon: Daemon, source: str) -> list:
    return [row for row in daemon.rows() if row["source"] == source]


def gap_sources(db: Path) -> list:
    with sqlite3.connect(str(db)) as conn:
        return [row[0] for row in conn.execute("SELECT source FROM gaps")]


@pytest.mark.system
def test_sighup_swaps_and_restarts_streams_and_stdin_loses_no_window(
    birdnet_model: Path, tmp_path: Path
) -> None:
    """stdin gets the thrush once before and once after three reloads: one removes HTTP
    stream 0 and adds stream 1, the next restarts stream 1 (a new watchdog), the last adds an
    input that cannot be opened (refused, nothing touched). The second play's rows
    are the first's, 36 s later to the sample (no reset, no gap, no window lost or repeated);
    stream 0 stopped, stream 1 started and started again."""
    config, db = tmp_path / "config.yaml", tmp_path / "birdd.db"
    with StreamServer([recording(THRUSH)]) as server:
        first, second = server.url(0), server.url(1)
        write_config(config, db, 0.4, inputs=["-", first])
        daemon = Daemon(config)
        play = thrush_play()
        daemon.feed(play)
        daemon.wait_for("stdin's first play", lambda: len(source_rows(daemon, "stdin")) >= 18)
        daemon.wait_for("rows from stream 0", lambda: source_rows(daemon, first))
        write_config(config, db, 0.4, inputs=["-", second])
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for("stream 0 stopped", lambda: any("stopped;" in e for e in daemon.err))
        after_stop = len(source_rows(daemon, first))
        daemon.wait_for("rows from stream 1", lambda: source_rows(daemon, second))
        write_config(config, db, 0.4, inputs=["-", second], audio={"watchdog_s": 4})
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for("stream 1 restarted", lambda: len(started(daemon, second)) == 2)
        write_config(config, db, 0.4, inputs=["-", second, "ftp://x/a.wav"])
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for("the refusal", lambda: any("inputs not changed" in e for e in daemon.err))
        daemon.feed(play)
        daemon.wait_for("stdin's second play", lambda: len(source_rows(daemon, "stdin")) >= 36)
        assert daemon.stop(signal.SIGTERM) == 0, "".join(daemon.err)
    stdin = source_rows(daemon, "stdin")
    assert len(stdin) == 36 and heard(stdin, 1) == heard(stdin, 0), stdin
    assert len(source_rows(daemon, first)) == after_stop, "stream 0 went on after it stopped"
    assert "stdin" not in gap_sources(db)
    changed = [line for line in daemon.err if "reload: inputs:" in line]
    assert len(changed) == 2 and f"added {second}; removed {first}; kept running -" in changed[0]
    assert f"restarted {second}; kept running -" in changed[1], changed
    assert len([line for line in daemon.err if "stopped;" in line]) == 2, daemon.err
    assert len(started(daemon, second)) == 2, "the refused reload touched stream 1"
    refused = [line for line in daemon.err if "inputs not changed" in line]
    assert len(refused) == 1 and "'ftp://x/a.wav' is a URL ffmpeg is not asked" in refused[0]


def started(daemon: Daemon, url: str) -> list:
    return [line for line in daemon.err if f"receiving {url} through ffmpeg" in line]


@pytest.mark.system
def test_sighup_removes_an_ended_stdin_and_its_audio_still_counts(
    birdnet_model: Path, tmp_path: Path
) -> None:
    """stdin played once and closed, then removed by a reload: it is closed at once, and the
    run, stopped before the stream it kept delivered anything, still heard audio (exit 0)."""
    config, db = tmp_path / "config.yaml", tmp_path / "birdd.db"
    with StreamServer([recording(THRUSH)]) as server:
        write_config(config, db, 0.4, inputs=["-", server.url(0)])
        daemon = Daemon(config)
        daemon.feed(thrush_play())
        daemon.stop_feeding()
        daemon.wait_for("stdin's play", lambda: len(source_rows(daemon, "stdin")) >= 18)
        write_config(config, db, 0.4, inputs=[server.url(0)])
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for("stdin closed", lambda: any("stdin: stopped;" in e for e in daemon.err))
        assert daemon.stop(signal.SIGTERM) == 0, "".join(daemon.err)
    assert not any("no audio from any input" in line for line in daemon.err), daemon.err
    assert len(source_rows(daemon, "stdin")) == 18
