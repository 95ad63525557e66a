"""The base class of the runtime models."""

import os

import numpy as np

from .errors import ModelError


class Model:
    """A loaded model: ``run(batch, roles)`` runs a C-contiguous float32 ``[B, window]`` batch
    (B ≤ the batch size) through the model once and returns its outputs for ``roles`` (each
    ``scores`` or ``embeddings``) in that order: both from one invoke, not one per role.

    ``request`` is what ``birdd.engines.base.model_request`` builds (and the worker receives in
    its load request): model path, engine type, window_samples, input_dtype, batch_size, the
    sidecar's output names and the engine's config. ``runtime`` names the runtime and version.
    """

    def __init__(self, request):
        self.path = str(request["model"])
        self.engine = str(request["engine"])
        self.window = int(request["window_samples"])
        self.input_dtype = str(request.get("input_dtype", "float32"))
        self.batch = int(request["batch_size"])
        self.outputs = dict(request.get("outputs") or {})
        self.config = dict(request.get("config") or {})
        self.runtime = ""
        self.pad = None

    def padded(self, batch, size):
        """``batch`` zero-padded to ``size`` rows, in a buffer kept between calls."""
        rows = batch.shape[0]
        if rows == size:
            return batch
        if self.pad is None or self.pad.shape[0] != size:
            self.pad = np.zeros((size, self.window), dtype=np.float32)
        self.pad[:rows] = batch
        self.pad[rows:] = 0.0
        return self.pad

    def check_dtype(self, found):
        """``found``: the numpy name of the model's input type, against the sidecar's."""
        if found != self.input_dtype:
            raise ModelError(
                f"model {self.path} takes {found} input but its sidecar says {self.input_dtype}: "
                "birdd feeds float32 windows, use a model with float input"
            )

    def no_output(self, role):
        if role == "embeddings":
            name = os.path.basename(self.path)
            raise ModelError(f"model {name} on engine {self.engine} has no embeddings")
        raise ModelError(f"model {self.path} has no {role} output")

    def outputs_of(self, table, roles):
        """What ``table`` (role → output name or index) holds for each of ``roles``."""
        found = [table.get(role) for role in roles]
        for role, output in zip(roles, found):
            if output is None:
                self.no_output(role)
        return found

    def run(self, batch, roles):
        raise NotImplementedError

    def close(self):
        """Release what the runtime holds beyond garbage collection (GPU memory)."""
