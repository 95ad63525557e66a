"""A reload's clips settings for a running pipeline: the folder, the format, the pre- and
post-roll and the privacy guard apply to the next clip, when the ring buffers the run started
with are long enough for them."""

from __future__ import annotations

from birdd.daemon.app.session import clip_settings
from birdd.daemon.clips.privacy import ClipsError
from birdd.daemon.clips.stage import check_folder, ring_seconds, speech_guard
from birdd.daemon.config import BirddConfig
from birdd.daemon.pipeline.chain import Pipeline
from birdd.engines.models.artifact import ModelArtifact

RESTART = "restart birdd (systemctl restart birdd)"


def retune_clips(pipeline: Pipeline, artifact: ModelArtifact, config: BirddConfig) -> None:
    """Hand the pipeline's clip stage the clips settings of ``config``; ClipsError (one line,
    nothing changed) when they cannot apply to this run."""
    stage, settings = pipeline.clips, clip_settings(config)
    if stage is None or settings is None:
        raise ClipsError(
            f"clips: turning clips or the privacy guard on or off needs a restart: {RESTART}"
        )
    window, hop, ring_s = pipeline.stream_shape
    needed = ring_seconds(settings, config.audio.ring_buffer_s, artifact.sample_rate, window, hop)
    if needed > ring_s:
        raise ClipsError(
            f"clips: pre_s and post_s need {needed:.0f} s of audio per input, this run keeps "
            f"{ring_s:.0f} s: {RESTART}"
        )
    if settings.config.enabled:
        check_folder(settings.config)
    stage.retune(settings, speech_guard(settings, artifact))
