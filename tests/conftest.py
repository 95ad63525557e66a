"""Shared fixtures: the real recordings in ../shared/audio (or $BIRDD_TEST_AUDIO)."""

from __future__ import annotations

from pathlib import Path

import pytest
from birdd_testing import AUDIO


@pytest.fixture(scope="session")
def audio_dir() -> Path:
    if not (AUDIO / "soundscapes").is_dir():
        pytest.fail(f"test recordings not found in {AUDIO}: set BIRDD_TEST_AUDIO")
    return AUDIO
