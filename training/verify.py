"""Re-score windows through the real birdd engines and compare with PyTorch.

Each export is loaded the way ``birdd --simulate --model FILE`` loads it (engines/registry.py)
and scores the same raw audio windows; the reference is the PyTorch head on the embeddings and
logits the base model gives for those windows on the same engine type. FP32 exports must agree
within 1e-3.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Sequence

import numpy as np

from birdd.engines.base import Engine
from birdd.engines.registry import create_engine, engine_classes

TOLERANCE = 1e-3


@dataclass
class Parity:
    export: str
    engine: str
    windows: int
    max_abs_diff: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= TOLERANCE

    def to_json(self) -> Dict[str, object]:
        return {**asdict(self), "ok": self.ok, "tolerance": TOLERANCE}


def open_engine(engine_type: str, model: str, batch: int = 8) -> Engine:
    config = engine_classes()[engine_type].config_class(model=model, batch_size=batch)
    return create_engine(config)


def _in_batches(function: Callable[[np.ndarray], np.ndarray], windows: np.ndarray, batch: int):
    return np.concatenate([function(windows[i : i + batch]) for i in range(0, len(windows), batch)])


def check_export(
    path: Path,
    engine_type: str,
    base_model: str,
    windows: np.ndarray,
    labels: Sequence[str],
    reference: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> Parity:
    """Score ``windows`` with the export on ``engine_type``; ``reference(embeddings, logits)``
    is the PyTorch head on what ``base_model`` gives on the same engine type. The head's
    classes are found among the export's by label (in append mode they sit among BirdNET's)."""
    base = open_engine(engine_type, base_model)
    try:
        batch = base.input_spec.max_batch
        expected = reference(
            _in_batches(base.embed, windows, batch), _in_batches(base.predict, windows, batch)
        )
    finally:
        base.close()
    engine = open_engine(engine_type, str(path))
    try:
        where = {sp.label: index for index, sp in enumerate(engine.artifact.species)}
        columns = [where[label] for label in labels]
        scores = _in_batches(engine.predict, windows, engine.input_spec.max_batch)
    finally:
        engine.close()
    difference = np.abs(scores[:, columns] - expected).max()
    return Parity(path.name, engine_type, len(windows), float(difference))
