"""A real RTSP server for the tests: serves one recording as 48 kHz mono L16 in real time.

Run by the SYSTEM Python (``/usr/bin/python3``, which has python3-gi and the GStreamer RTSP
server typelib), never imported by pytest; ``audio_servers.RtspServer`` starts it::

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --mount /audio [--loop] FILE

The file is decoded once at start (anything GStreamer's ``uridecodebin`` reads: wav, flac,
ogg/opus, mp3), so a bad file fails here, at start, instead of at the first DESCRIBE. Each
client connection gets its own media (not shared) fed from that memory by an ``appsrc``: a
client that reconnects after an outage or a timeout gets a fresh, working stream from the
start of the file, whatever state a half-dead earlier session is in. Buffers carry timestamps
from 0 and the server's sinks sync on the clock, so the stream runs in real time, as a
camera's would.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

RATE = 48000
BYTES_PER_SAMPLE = 2  # S16BE mono: what rtpL16pay sends
CAPS = f"audio/x-raw,format=S16BE,layout=interleaved,rate={RATE},channels=1"
CHUNK_SAMPLES = RATE // 50  # 20 ms per buffer


def decode(path: Path) -> bytes:
    """The whole file as 48 kHz mono S16BE, decoded and resampled by GStreamer."""
    pipeline = Gst.parse_launch(
        "uridecodebin name=decode ! audioconvert ! audio/x-raw,format=F32LE ! audioresample ! "
        f"audioconvert dithering=none noise-shaping=none ! {CAPS} ! appsink name=sink sync=false"
    )
    pipeline.get_by_name("decode").set_property("uri", path.resolve().as_uri())
    sink, bus = pipeline.get_by_name("sink"), pipeline.get_bus()
    pipeline.set_state(Gst.State.PLAYING)
    chunks = []
    idle_s = 0.0
    while not sink.get_property("eos") and idle_s < 10:
        sample = sink.emit("try-pull-sample", Gst.SECOND // 10)
        if sample is not None:
            buffer, idle_s = sample.get_buffer(), 0.0
            chunks.append(buffer.extract_dup(0, buffer.get_size()))
            continue
        idle_s += 0.1
        message = bus.pop_filtered(Gst.MessageType.ERROR)
        if message is not None:  # an error never reaches the appsink: no EOS, ask the bus
            pipeline.set_state(Gst.State.NULL)
            error, debug = message.parse_error()
            raise SystemExit(f"cannot decode {path}: {error.message} ({debug})")
    finished = sink.get_property("eos")
    pipeline.set_state(Gst.State.NULL)
    data = b"".join(chunks)
    if not finished or not data:
        raise SystemExit(f"cannot decode {path}: {'no audio' if finished else 'decoder stuck'}")
    return data


class Feeder:
    """Pushes the decoded audio into one media's ``appsrc``, 20 ms a buffer, looped or not."""

    def __init__(self, appsrc: Gst.Element, data: bytes, loop: bool) -> None:
        self.appsrc, self.data, self.loop = appsrc, data, loop
        self.offset = 0  # bytes into data
        self.samples = 0  # samples pushed so far (the timestamps)
        appsrc.connect("need-data", self.on_need_data)

    def on_need_data(self, appsrc: Gst.Element, _length: int) -> None:
        if self.offset >= len(self.data):
            if not self.loop:
                appsrc.emit("end-of-stream")
                return
            self.offset = 0
        chunk = self.data[self.offset : self.offset + CHUNK_SAMPLES * BYTES_PER_SAMPLE]
        self.offset += len(chunk)
        count = len(chunk) // BYTES_PER_SAMPLE
        buffer = Gst.Buffer.new_wrapped(chunk)
        buffer.pts = Gst.util_uint64_scale(self.samples, Gst.SECOND, RATE)
        buffer.duration = Gst.util_uint64_scale(count, Gst.SECOND, RATE)
        self.samples += count
        appsrc.emit("push-buffer", buffer)


class Factory(GstRtspServer.RTSPMediaFactory):
    """One media per client (not shared), each with its own Feeder from the start of the file."""

    def __init__(self, data: bytes, loop: bool) -> None:
        super().__init__()
        self.data, self.loop = data, loop
        self.feeders = {}  # media -> Feeder: keeps each one alive as long as its media
        self.set_shared(False)
        self.set_launch(
            f"( appsrc name=src format=time is-live=false caps={CAPS} ! rtpL16pay name=pay0 pt=96 )"
        )
        self.connect("media-configure", self.on_media_configure)

    def on_media_configure(self, _factory: Factory, media: GstRtspServer.RTSPMedia) -> None:
        appsrc = media.get_element().get_by_name_recurse_up("src")
        self.feeders[media] = Feeder(appsrc, self.data, self.loop)
        media.connect("unprepared", lambda m: self.feeders.pop(m, None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", type=Path)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--mount", default="/audio")
    parser.add_argument("--loop", action="store_true", help="loop the file (default: once)")
    args = parser.parse_args()

    Gst.init(None)
    data = decode(args.audio)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.address)
    server.set_service(str(args.port))
    server.get_mount_points().add_factory(args.mount, Factory(data, args.loop))
    if server.attach(None) == 0:
        raise SystemExit(f"cannot listen on {args.address}:{args.port}")
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    seconds = len(data) / BYTES_PER_SAMPLE / RATE
    print(
        f"serving {args.audio} ({seconds:.1f} s, loop={args.loop}) at "
        f"rtsp://{args.address}:{server.get_bound_port()}{args.mount}",
        file=sys.stderr,
        flush=True,
    )
    loop.run()


if __name__ == "__main__":
    main()
