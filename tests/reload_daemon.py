"""A real `birdd run` on stdin for the SIGHUP tests: fed the thrush recording (30 s and 6 s of
silence, a whole number of windows) as raw PCM, its JSON lines and log read as they come."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import soundfile
import yaml
from birdd_testing import THRUSH, birdd_command, jsonl_rows, recording

RATE = 32000
SILENCE_S = 6  # closes the last window of a play; 30 s + 6 s keeps the windows aligned
PLAY_S = 30 + SILENCE_S


class Daemon:
    """`birdd run --config …` reading raw PCM on stdin; stdout (JSON lines) and stderr are
    read into lists as they come."""

    def __init__(self, config: Path, env: Optional[dict] = None) -> None:
        self.process = subprocess.Popen(
            birdd_command("run", "--config", str(config)),
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.out: List[str] = []
        self.err: List[str] = []
        for stream, lines in ((self.process.stdout, self.out), (self.process.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, lines), daemon=True).start()

    @staticmethod
    def _read(stream, lines: List[str]) -> None:
        for line in stream:
            lines.append(line.decode())

    def feed(self, pcm: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(pcm)
        self.process.stdin.flush()

    def wait_for(self, what: str, done: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert self.process.poll() is None, f"birdd ended waiting for {what}: {self.err}"
            assert time.monotonic() < deadline, f"no {what} in {timeout} s: {self.err}"
            time.sleep(0.1)

    def rows(self) -> list:
        return jsonl_rows("".join(line for line in self.out if line.endswith("\n")))

    def stop_feeding(self) -> None:
        """Close stdin: its input ends."""
        assert self.process.stdin is not None
        self.process.stdin.close()

    def stop(self, how: Optional[signal.Signals]) -> int:
        if how is None:
            self.stop_feeding()
        else:
            self.process.send_signal(how)
        return self.process.wait(timeout=60)


def thrush_play() -> bytes:
    samples, rate = soundfile.read(str(recording(THRUSH)), dtype="int16")
    assert rate == RATE and len(samples) == 30 * RATE
    return np.concatenate([samples, np.zeros(SILENCE_S * RATE, np.int16)]).tobytes()


def write_config(
    path: Path,
    db: Path,
    min_confidence: object,
    inputs: Sequence[str] = ("-",),
    audio: Optional[dict] = None,
    **blocks: dict,
) -> None:
    """stdin (and ``inputs``) with ``audio``'s other keys."""
    stdin = {"sample_rate": RATE, "format": "s16le"}
    config = {
        **blocks,
        "audio": {"inputs": list(inputs), "stdin": stdin, **(audio or {})},
        "postprocess": {
            "min_confidence": min_confidence,
            "model_thresholds": False,
            "per_window": True,
        },
        "output": {"format": "jsonl"},
        "storage": {"db": str(db)},
    }
    path.write_text(yaml.safe_dump(config))


def heard(rows: list, play: int) -> set:
    """(species, offset in the play) of the rows from play 0 or 1."""
    return {
        (row["species"]["scientific"], round(row["offset_start"] - play * PLAY_S, 1))
        for row in rows
        if play * PLAY_S <= row["offset_start"] < (play + 1) * PLAY_S
    }


def threshold_between(confidences: List[float]) -> float:
    """A threshold in the widest gap between the confidences, with 3 or more on each side."""
    ordered = sorted(confidences)
    gaps = [(ordered[i + 1] - ordered[i], i) for i in range(2, len(ordered) - 3)]
    _, i = max(gaps)
    return round((ordered[i] + ordered[i + 1]) / 2, 4)


def first_play(tmp_path: Path, env: Optional[dict] = None, **blocks: dict) -> tuple:
    """A daemon at min_confidence 0.4 that has reported the first play of the thrush."""
    config, db = tmp_path / "config.yaml", tmp_path / "birdd.db"
    write_config(config, db, 0.4, **blocks)
    daemon = Daemon(config, env)
    play = thrush_play()
    daemon.feed(play)
    daemon.wait_for("the first play's 18 rows", lambda: len(daemon.rows()) >= 18)
    return daemon, config, db, play


def gaps(db: Path) -> int:
    with sqlite3.connect(str(db)) as conn:
        return conn.execute("SELECT COUNT(*) FROM gaps").fetchone()[0]
