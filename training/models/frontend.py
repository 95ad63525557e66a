"""The student's front end in torch, built from the matrices in ``birdd.engines.frontend``
(computed there once, in numpy): three fixed convolutions and a log, no FFT op."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from birdd.engines.frontend import (
    FrontendParams,
    dft_weights,
    lowpass_taps,
    mel_weights,
)


def _constant(values: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(values.astype(np.float32))


class LogMel(nn.Module):
    """``[B, samples]`` raw audio → ``[B, n_mels, frames]`` log-mel power."""

    def __init__(self, params: FrontendParams) -> None:
        super().__init__()
        self.params = params
        # Not in the state dict: rebuilt from the parameters, identical by construction.
        self.register_buffer("lowpass", _constant(lowpass_taps(params))[None, None], False)
        self.register_buffer("dft", _constant(dft_weights(params))[:, None, :], False)
        self.bins = int(self.dft.shape[0]) // 2  # a constant, so the exported Slice is static
        self.register_buffer("mel", _constant(mel_weights(params))[:, :, None], False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = audio[:, None, :]
        if self.params.decimate > 1:
            x = nn.functional.conv1d(x, self.lowpass, stride=self.params.decimate)
        x = nn.functional.conv1d(x, self.dft, stride=self.params.hop)
        real, imaginary = x[:, : self.bins], x[:, self.bins :]
        x = nn.functional.conv1d(real * real + imaginary * imaginary, self.mel)
        return torch.log(x + self.params.log_floor)
