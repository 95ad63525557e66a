"""The pieces of the shared HTTP stream reader without a server: the incremental WAV head
parser and body decoder against soundfile's own reading of real WAV files (every subtype the
reader claims, WAVE_FORMAT_EXTENSIBLE, a LIST chunk before the samples, resampling against
soxr's one-shot), MP3 through PyAV's codec parser against PyAV's demuxer, format sniffing, and
the block/pace helpers shared with the PyAV thread path. The servers are in
test_http_audio_system.py."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Tuple

import av
import numpy as np
import pytest
import soundfile
import soxr
from birdd_testing import THRUSH, recording

from birdd.daemon.sources.base import SourceError
from birdd.daemon.sources.httpaudio import stream_format
from birdd.daemon.sources.streamblocks import AHEAD_S, RealTimePace, Reblocker
from birdd.daemon.sources.streambody import CodedBody, WavBody, parse_wav_head

BITS = {"PCM_U8": 8, "PCM_16": 16, "PCM_24": 24, "PCM_32": 32, "FLOAT": 32, "DOUBLE": 64}
TOLERANCE = {"PCM_U8": 2**-7, "PCM_16": 2**-15, "PCM_24": 2**-23, "PCM_32": 2**-23}
"""One least significant bit (float32's resolution for 32-bit PCM); floats must agree."""


def thrush(seconds: float, channels: int = 1) -> Tuple[np.ndarray, int]:
    """The first ``seconds`` of a real recording (32 kHz), as ``channels`` distinct channels."""
    samples, rate = soundfile.read(str(recording(THRUSH)), dtype="float64", always_2d=True)
    mono = samples[: int(seconds * rate), 0]
    return np.stack([np.roll(mono, 97 * n) * (0.9 - 0.2 * n) for n in range(channels)], 1), rate


def write_wav(path: Path, subtype: str, channels: int = 1, wav_format: str = "WAV") -> Path:
    samples, rate = thrush(1.0, channels)
    soundfile.write(str(path), samples, rate, subtype=subtype, format=wav_format)
    return path


def pieces(data: bytes, seed: int, largest: int = 5000) -> Iterator[bytes]:
    """``data`` in random-size pieces (1 byte up to ``largest``), as a socket delivers it."""
    rng, at = np.random.default_rng(seed), 0
    while at < len(data):
        size = int(rng.integers(1, largest + 1))
        yield data[at : at + size]
        at += size


def decode_all(body, data: bytes, seed: int = 1) -> np.ndarray:
    out = [body.decode(piece) for piece in pieces(data, seed)]
    return np.concatenate(out)


def assert_head_parsed_incrementally(data: bytes, subtype: str, channels: int, offset: int):
    """Every prefix short of the samples gives None; from the samples on, the format."""
    for end in range(offset):
        assert parse_wav_head(data[:end]) is None, f"complete after {end} of {offset} bytes"
    for end in (offset, offset + 1, offset + 1000):
        parsed = parse_wav_head(data[:end])
        assert parsed is not None
        found, start = parsed
        assert start == offset
        assert (found.channels, found.rate, found.bits) == (channels, 32000, BITS[subtype])
        assert found.tag == (3 if subtype in ("FLOAT", "DOUBLE") else 1)


@pytest.mark.parametrize("subtype", sorted(BITS))
@pytest.mark.parametrize("channels", [1, 2])
def test_wav_head_byte_by_byte(tmp_path: Path, subtype: str, channels: int) -> None:
    data = write_wav(tmp_path / "a.wav", subtype, channels).read_bytes()
    assert_head_parsed_incrementally(data, subtype, channels, data.find(b"data") + 8)


def test_wav_head_with_a_list_chunk_before_the_samples(tmp_path: Path) -> None:
    path = tmp_path / "tagged.wav"
    samples, rate = thrush(1.0)
    with soundfile.SoundFile(str(path), "w", rate, 1, "PCM_16") as out:
        out.title = "wood thrush, odd length"  # a LIST/INFO chunk, odd-sized string inside
        out.write(samples)
    data = path.read_bytes()
    assert -1 < data.find(b"LIST") < data.find(b"data"), "libsndfile put no LIST before data"
    assert_head_parsed_incrementally(data, "PCM_16", 1, data.find(b"data") + 8)
    frames = decode_all(WavBody(1, rate), data[: data.find(b"data") + 8 + 2 * len(samples)])
    expected, _ = soundfile.read(str(path), dtype="float32", always_2d=True)
    np.testing.assert_allclose(frames, expected, atol=2**-15, rtol=0)


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
def test_wave_format_extensible_four_channels_mixed_to_mono(tmp_path: Path, subtype: str):
    data = write_wav(tmp_path / "x.wav", subtype, 4, "WAVEX").read_bytes()
    parsed = parse_wav_head(data)
    assert parsed is not None and data[20:22] == b"\xfe\xff", "not WAVE_FORMAT_EXTENSIBLE"
    assert_head_parsed_incrementally(data, subtype, 4, parsed[1])
    expected, _ = soundfile.read(str(tmp_path / "x.wav"), dtype="float32", always_2d=True)
    frames = decode_all(WavBody(1, 32000), data)
    assert frames.shape == (len(expected), 1)
    np.testing.assert_allclose(frames[:, 0], expected.mean(axis=1), atol=2**-15, rtol=0)


@pytest.mark.parametrize("subtype", sorted(BITS))
@pytest.mark.parametrize("channels", [1, 2])
def test_wav_body_in_random_pieces_is_soundfiles_samples(
    tmp_path: Path, subtype: str, channels: int
) -> None:
    path = write_wav(tmp_path / "a.wav", subtype, channels)
    expected, _ = soundfile.read(str(path), dtype="float32", always_2d=True)
    for seed in range(3):
        frames = decode_all(WavBody(channels, 32000), path.read_bytes(), seed)
        assert frames.dtype == np.float32 and frames.shape == expected.shape
        np.testing.assert_allclose(frames, expected, atol=TOLERANCE.get(subtype, 1e-7), rtol=0)


def test_stereo_wav_to_mono_and_mono_to_stereo(tmp_path: Path) -> None:
    stereo = write_wav(tmp_path / "s.wav", "PCM_16", 2)
    expected, _ = soundfile.read(str(stereo), dtype="float32", always_2d=True)
    mono = decode_all(WavBody(1, 32000), stereo.read_bytes())
    np.testing.assert_allclose(mono[:, 0], expected.mean(axis=1), atol=2**-15, rtol=0)
    single = write_wav(tmp_path / "m.wav", "PCM_16", 1)
    both = decode_all(WavBody(2, 32000), single.read_bytes())
    assert both.shape[1] == 2 and np.array_equal(both[:, 0], both[:, 1])


def test_wav_body_resampled_to_the_model_rate_matches_soxr(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "a.wav", "FLOAT", 1)  # 1 s at 32 kHz
    samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    expected = soxr.resample(samples, rate, 48000)
    frames = decode_all(WavBody(1, 48000), path.read_bytes())
    held = len(expected) - len(frames)  # the filter's delay: a live stream is never flushed
    assert 0 <= held <= 480, (len(frames), len(expected))
    shared = len(frames)
    np.testing.assert_allclose(frames[:shared], expected[:shared], atol=1e-4, rtol=0)


def test_not_a_wav_is_refused_in_one_line() -> None:
    for data in (b"OggS\0\x02" + b"\0" * 40, b"RIFF\xff\xff\xff\xffAVI LIST" + b"\0" * 40):
        with pytest.raises(SourceError, match="not a WAV stream") as caught:
            WavBody(1, 48000).decode(data)
        assert "\n" not in str(caught.value)
    head = b"RIFF\xff\xff\xff\xffWAVEdata\xff\xff\xff\xff"
    with pytest.raises(SourceError, match="samples before the fmt chunk"):
        parse_wav_head(head)
    endless = b"RIFF\xff\xff\xff\xffWAVEjunk\x00\x00\x02\x00"
    with pytest.raises(SourceError, match="no samples in its first"):
        parse_wav_head(endless)


def test_unsupported_wav_formats_are_refused_naming_the_fix(tmp_path: Path) -> None:
    adpcm = write_wav(tmp_path / "adpcm.wav", "MS_ADPCM").read_bytes()
    with pytest.raises(SourceError, match="format 2, 4 bits") as caught:
        parse_wav_head(adpcm)
    assert "audio.decoder ffmpeg" in str(caught.value) and "\n" not in str(caught.value)
    twelve = bytearray(write_wav(tmp_path / "p.wav", "PCM_16").read_bytes()[:44])
    twelve[34:36] = (12).to_bytes(2, "little")  # 12-bit PCM: not a size numpy can read
    with pytest.raises(SourceError, match="format 1, 12 bits"):
        WavBody(1, 48000).decode(bytes(twelve))


def test_stream_format_from_content_type_and_first_bytes() -> None:
    riff, id3, ogg = b"RIFF\x24\0\0\0", b"ID3\x04", b"OggS\0\x02"
    mp3_sync, adts_sync = b"\xff\xfb\x90\x64", b"\xff\xf1\x50\x80"
    assert stream_format("audio/x-wav", b"") == "wav"
    assert stream_format("audio/mpeg", ogg) == "mp3"  # the server's word goes first
    assert stream_format("audio/aacp", b"") == "aac"
    for content_type in ("", "application/octet-stream", "audio/x-unknown"):
        assert stream_format(content_type, riff) == "wav"
        assert stream_format(content_type, id3) == "mp3"
        assert stream_format(content_type, mp3_sync) == "mp3"
        assert stream_format(content_type, adts_sync) == "aac"
        assert stream_format(content_type, ogg) is None
        assert stream_format(content_type, b"<htm") is None
    assert stream_format("text/html", riff) is None
    assert stream_format("audio/ogg", ogg) is None


def write_mp3(path: Path, seconds: float) -> Path:
    """A real MP3 (LAME, 44.1 kHz: resampled on decoding) of the thrush recording."""
    samples, rate = thrush(seconds)
    audio = soxr.resample(samples[:, 0].astype(np.float32), rate, 44100)
    with av.open(str(path), "w", format="mp3") as box:
        stream = box.add_stream("libmp3lame", rate=44100, layout="mono")
        for start in range(0, len(audio), 1152):
            piece = audio[None, start : start + 1152]
            frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, start
            box.mux(stream.encode(frame))
        box.mux(stream.encode(None))
    return path


def demuxer_decode(path: Path, rate: int) -> np.ndarray:
    """What PyAV's own demuxer and decoder make of the file, at ``rate``."""
    out = []
    with av.open(str(path)) as box:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        for frame in box.decode(box.streams.audio[0]):
            out += [piece.to_ndarray().reshape(-1) for piece in resampler.resample(frame)]
        out += [piece.to_ndarray().reshape(-1) for piece in resampler.resample(None)]
    return np.concatenate(out)


def test_mp3_in_4_kb_pieces_decodes_like_pyavs_demuxer(tmp_path: Path) -> None:
    path = write_mp3(tmp_path / "thrush.mp3", 5.0)
    data = path.read_bytes()
    assert stream_format("", data[:16]) == "mp3"  # an ID3 tag first, then frames
    body = CodedBody("mp3", 1, 48000)
    frames = np.concatenate([body.decode(data[at : at + 4096]) for at in range(0, len(data), 4096)])
    frames = frames[:, 0]
    expected = demuxer_decode(path, 48000)
    # The demuxer trims LAME's encoder delay (1105 samples at 44.1 kHz) from the file's gapless
    # info; a live stream carries none, so the parser path keeps it: find it by correlation.
    second = expected[48000:96000]
    lag = max(range(3000), key=lambda k: float(np.dot(frames[48000 + k : 96000 + k], second)))
    assert abs(lag - 1105 * 48000 / 44100) <= 1
    mp3_frame_at_48k = 1152 * 48000 // 44100 + 1
    assert abs(len(frames) - lag - len(expected)) <= mp3_frame_at_48k, (len(frames), lag)
    aligned = frames[lag : lag + len(expected)]
    likeness = np.dot(aligned, expected) / np.linalg.norm(aligned) / np.linalg.norm(expected)
    assert likeness > 0.95  # not 1: the lag is 1202.7 samples, a fraction off at 7 kHz


def test_reblocker_gives_whole_blocks_in_order() -> None:
    blocks, pieces_in = Reblocker(250), []
    out = []
    for n in range(10):
        piece = np.full((100, 2), n, np.float32)
        pieces_in.append(piece)
        block = blocks.add(piece)
        if block is not None:
            out.append(block)
    assert [len(block) for block in out] == [300, 300, 300]
    assert blocks.add(np.zeros((0, 2), np.float32)) is None  # 100 frames held, no block yet
    np.testing.assert_array_equal(np.concatenate(out), np.concatenate(pieces_in)[:900])
    assert blocks.add(np.ones((150, 2), np.float32)) is not None


def test_real_time_pace_waits_only_past_the_allowance() -> None:
    pace = RealTimePace(1000)
    assert pace.delivered(int(AHEAD_S * 1000) - 100) == 0.0  # within the allowance
    wait = pace.delivered(2100)  # 2.5 s delivered at once: 2 s past the allowance
    assert 1.0 < wait <= 2.0
