import os
from datetime import datetime, timezone

import pytest

from birdd.daemon.app.starttime import recording_start, time_from_filename


@pytest.mark.parametrize(
    "name, expected",
    [
        ("20210502_040000.WAV", datetime(2021, 5, 2, 4, 0, 0, tzinfo=timezone.utc)),
        ("S4A03895_20190522_060000.wav", datetime(2019, 5, 22, 6, 0, 0, tzinfo=timezone.utc)),
        ("pykanto_audiomoth_20210502_040000.wav", datetime(2021, 5, 2, 4, tzinfo=timezone.utc)),
        ("SMM07257_20230601T213000.flac", datetime(2023, 6, 1, 21, 30, tzinfo=timezone.utc)),
    ],
)
def test_recorder_stamps_in_file_names(name, expected):
    assert time_from_filename(name) == expected


@pytest.mark.parametrize("name", ["XC563936_soundscape.mp3", "20211399_250000.wav", "x.wav"])
def test_names_without_a_valid_stamp(name):
    assert time_from_filename(name) is None


def test_origin_order(tmp_path):
    stamped = tmp_path / "20210502_040000.wav"
    plain = tmp_path / "dawn.wav"
    for path in (stamped, plain):
        path.write_bytes(b"x")
    os.utime(plain, (1_700_000_060, 1_700_000_060))
    start, origin = recording_start(stamped, "2024-05-02T04:00:00Z", 60)
    assert (start.isoformat(), origin) == ("2024-05-02T04:00:00+00:00", "--start-time")
    start, origin = recording_start(stamped, None, 60)
    assert start == datetime(2021, 5, 2, 4, tzinfo=timezone.utc) and "file name" in origin
    start, origin = recording_start(plain, None, 60)
    assert start.timestamp() == 1_700_000_000 and "modification time" in origin
    with pytest.raises(ValueError, match="--start-time"):
        recording_start(plain, "yesterday", 60)
