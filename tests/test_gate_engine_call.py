"""One engine call for both outputs (issue #11): ``infer`` returns BirdNET's scores and its
embeddings from one run of the model, in-process (TFLite, ONNX Runtime) and through the worker
(one request), equal to what ``predict`` and ``embed`` return one at a time."""

from __future__ import annotations

import numpy as np
import pytest
from birdd_testing import THRUSH, model_windows, recording

from birdd.engines.models.artifact import load_artifact
from birdd.engines.models.modeldir import resolve_model
from birdd.engines.onnx import ONNXConfig
from birdd.engines.registry import create_engine
from birdd.engines.tflite import TFLiteConfig
from birdd.engines.worker import WorkerEngine

pytestmark = pytest.mark.system
CONFIGS = {"tflite": TFLiteConfig, "onnx": ONNXConfig}


@pytest.fixture(scope="module")
def windows(birdnet_model) -> np.ndarray:
    return model_windows(recording(THRUSH))[2:5]


@pytest.mark.parametrize("engine_type", sorted(CONFIGS))
def test_infer_runs_the_model_once_for_scores_and_embeddings(engine_type, windows):
    engine = create_engine(CONFIGS[engine_type](batch_size=4))
    try:
        model = engine._model
        runs = []
        real_run = model.run
        model.run = lambda batch, roles: runs.append(list(roles)) or real_run(batch, roles)
        both = engine.infer(windows)
        assert runs == [["scores", "embeddings"]]
        assert both.scores.shape == (3, 6522) and both.embeddings.shape == (3, 1024)
        np.testing.assert_array_equal(both.scores, engine.predict(windows))
        np.testing.assert_array_equal(both.embeddings, engine.embed(windows))
        assert both.embeddings.max() > 0  # a bird is heard: real embeddings, not zeros
    finally:
        engine.close()


@pytest.mark.parametrize("engine_type", sorted(CONFIGS))
def test_infer_through_the_worker_is_one_request(engine_type, windows):
    config = CONFIGS[engine_type](batch_size=4)
    in_process = create_engine(config)
    expected = in_process.infer(windows)
    in_process.close()
    worker = WorkerEngine(config, load_artifact(resolve_model(config.model, engine_type)))
    worker.load()
    try:
        requests = []
        worker._on_sent = requests.append
        both = worker.infer(windows)
        assert len(requests) == 1
        np.testing.assert_allclose(both.scores, expected.scores, atol=1e-5)
        np.testing.assert_allclose(both.embeddings, expected.embeddings, atol=1e-5)
        np.testing.assert_allclose(worker.predict(windows[:1]), expected.scores[:1], atol=1e-5)
    finally:
        worker.close()
