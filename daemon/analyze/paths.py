"""From the PATH arguments of ``birdd analyze`` to the audio files, in a stable order.

A PATH is a file (taken whatever its extension), a folder (searched recursively for audio by
extension, hidden files skipped: a card copied on a Mac carries ``._NAME.WAV`` resource forks
that are no audio), a glob (``'cards/*/2024*.WAV'``, ``**`` recursive) or ``@LIST``: a text
file with one such PATH per line (blank lines and lines starting with ``#`` skipped; relative
paths relative to the list's folder). A file named twice is analysed once.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3"})
"""What libsndfile decodes, matched case-insensitively (AudioMoth writes ``.WAV``)."""
GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class AudioFile:
    """One file to analyse: its absolute path, and where its per-file output goes under
    ``--output DIR`` (the folder structure below a PATH folder is kept, as BirdNET-Analyzer
    keeps it)."""

    path: Path
    relative: Path


def expand_paths(arguments: Sequence[str]) -> List[AudioFile]:
    """Every audio file the arguments name, in argument order, each folder's files sorted;
    ValueError (one line) for a PATH that names nothing, or when no audio is found at all."""
    found: Dict[Path, AudioFile] = {}
    for argument in arguments:
        for item in _expand(argument, Path.cwd(), allow_list=True):
            found.setdefault(item.path, item)
    if not found:
        raise ValueError(
            f"no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) in "
            f"{' '.join(arguments)}: check the paths"
        )
    return _unique_outputs(list(found.values()))


def is_audio(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS


def _expand(argument: str, base: Path, allow_list: bool) -> Iterable[AudioFile]:
    if argument.startswith("@") and allow_list:
        return _from_list(_absolute(argument[1:], base))
    path = _absolute(argument, base)
    if path.is_dir():
        return _folder(path)
    if path.is_file():
        return [AudioFile(path.resolve(), Path(path.name))]
    if GLOB_CHARACTERS & set(argument):
        return _glob(str(path))
    raise ValueError(f"{argument}: no such file or folder; check the path")


def _absolute(text: str, base: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def _folder(folder: Path) -> List[AudioFile]:
    """The audio below ``folder``, sorted; hidden files and folders below it skipped."""
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        hidden = any(part.startswith(".") for part in relative.parts)
        if is_audio(path) and not hidden and path.is_file():
            files.append(AudioFile(path.resolve(), relative))
    return files


def _glob(pattern: str) -> List[AudioFile]:
    matches = [Path(match) for match in sorted(glob.glob(pattern, recursive=True))]
    if not matches:
        raise ValueError(f"{pattern}: the pattern matches no file; check it")
    files: List[AudioFile] = []
    for match in matches:
        if match.is_dir():
            files.extend(_folder(match))
        elif match.is_file():
            files.append(AudioFile(match.resolve(), Path(match.name)))
    return files


def _from_list(list_path: Path) -> List[AudioFile]:
    try:
        lines = list_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"@{list_path}: cannot read the list ({exc}); check the path") from None
    files: List[AudioFile] = []
    for line in lines:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            files.extend(_expand(entry, list_path.parent, allow_list=False))
    return files


def _unique_outputs(files: List[AudioFile]) -> List[AudioFile]:
    """Two files with the same output name (``a/x.wav`` and ``b/x.wav`` given one by one)
    get their whole path below the root instead, so neither table overwrites the other."""
    seen: Dict[Path, int] = {}
    for item in files:
        key = item.relative.with_suffix("")
        seen[key] = seen.get(key, 0) + 1
    return [
        item
        if seen[item.relative.with_suffix("")] == 1
        else AudioFile(item.path, Path(*item.path.parts[1:]))
        for item in files
    ]
