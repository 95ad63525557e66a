"""Training parts without the model: metrics against hand-worked values, the exported head's
arithmetic (PyTorch = numpy = ONNX Runtime), the head sidecar, window cutting, teacher filter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="needs the training extra: pip install 'birdd[training]'"
)

from birdd.engines.errors import ModelArtifactError  # noqa: E402
from birdd.engines.head import apply_head, load_head_weights  # noqa: E402
from birdd.engines.models.artifact import load_artifact  # noqa: E402
from birdd.engines.models.labels import Species  # noqa: E402
from birdd.training.datasets.records import Recording  # noqa: E402
from birdd.training.features.audio import cut_windows  # noqa: E402
from birdd.training.loop import lr_factor  # noqa: E402
from birdd.training.recipes.head import (  # noqa: E402
    HeadModel,
    fall_back_to_birdnet,
    predict_logits,
    recording_scores,
)
from birdd.training.recipes.targets import WindowSet, keep_windows  # noqa: E402
from birdd.training.report.metrics import (  # noqa: E402
    at_threshold,
    average_precision,
    best_threshold,
    roc_auc,
)

torch.set_num_threads(1)


def test_metrics_match_hand_worked_values():
    y = np.array([1, 0, 1, 0, np.nan, 1.0])  # the NaN (a background species) is ignored
    score = np.array([0.9, 0.8, 0.7, 0.1, 0.99, 0.05])
    # precision at each positive: 1/1, 2/3, 3/5
    assert average_precision(y, score) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # positive > negative in 3 of 6 pairs
    assert roc_auc(y, score) == pytest.approx(0.5)
    half = at_threshold(y, score, 0.5)
    assert (half.precision, half.recall) == pytest.approx((2 / 3, 2 / 3))
    assert best_threshold(y, score).f1 == pytest.approx(0.75)  # all three at 0.05
    assert np.isnan(average_precision(np.zeros(3), np.ones(3)))


def test_warm_up_then_cosine():
    assert lr_factor(0, 10, 100) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100) == pytest.approx(0.5)
    assert lr_factor(100, 10, 100) == pytest.approx(0.0)


@pytest.mark.parametrize("hidden", [0, 16])
def test_exported_weights_compute_what_the_model_does(hidden):
    """The input scale folded into the first layer; the BirdNET prior gathered by column."""
    rng = np.random.default_rng(0)
    model = HeadModel(32, 3, hidden, 0.2, 2.5, prior_mask=[1, 0, 1]).eval()
    with torch.no_grad():
        model.prior_scale.copy_(torch.tensor([0.7, 5.0, 1.3]))
    embeddings = rng.normal(size=(7, 32)).astype(np.float32) * 3
    birdnet = rng.normal(size=(7, 10)).astype(np.float32) * 4  # BirdNET's logits, 10 classes
    columns = [4, None, 9]
    prior = np.stack([birdnet[:, 4], np.zeros(7), birdnet[:, 9]], axis=1).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.as_tensor(embeddings), torch.as_tensor(prior)).numpy()
    weights = model.export_weights(columns)
    assert weights.prior_column.tolist() == [4, -1, 9]
    assert np.abs(apply_head(weights, embeddings, birdnet) - expected).max() < 1e-5


def _export(tmp_path, hidden=8):
    from birdd.training.export.artifacts import export_head

    model = HeadModel(24, 3, hidden, 0.0, 0.7, prior_mask=[0, 1, 1]).eval()
    base = load_artifact_stub(tmp_path)
    species = [Species(f"Genus s{k}", f"Bird {k}", None, True) for k in range(3)]
    weights = model.export_weights([None, 0, 0])
    path = export_head(tmp_path, weights, species, base, "birdnet", "t", {}, {})
    return model, path


def load_artifact_stub(tmp_path):
    """A tiny classifier artifact to stand as the base in the head's sidecar."""
    from birdd.engines.models.artifact import write_sidecar

    model = tmp_path / "base.onnx"
    model.write_bytes(b"not used")
    meta = {"name": "base", "version": "1", "kind": "classifier", "format": "onnx",
            "activation": "sigmoid", "sample_rate": 48000, "window_samples": 144000}  # fmt: skip
    write_sidecar(model, meta, [Species("A a", "A", None, True)])
    return load_artifact(model)


def test_head_export_round_trips_through_its_sidecar_and_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model, path = _export(tmp_path)
    artifact = load_artifact(path)
    assert artifact.kind == "head" and artifact.head["base_model"] == "birdnet"
    weights = load_head_weights(artifact)
    embeddings = np.random.default_rng(2).normal(size=(4, 24)).astype(np.float32)
    base_logits = np.random.default_rng(3).normal(size=(4, 1)).astype(np.float32)  # 1 class
    prior = np.concatenate([np.zeros((4, 1)), base_logits, base_logits], axis=1)
    with torch.no_grad():
        expected = model(torch.as_tensor(embeddings), torch.as_tensor(prior).float()).numpy()
    session = ort.InferenceSession(str(path))
    (from_onnx,) = session.run(None, {"embeddings": embeddings, "base_logits": base_logits})
    assert np.abs(apply_head(weights, embeddings, base_logits) - expected).max() < 1e-5
    assert np.abs(from_onnx - expected).max() < 1e-5


def test_head_weights_that_do_not_match_the_sidecar_are_refused(tmp_path):
    _, path = _export(tmp_path)
    (tmp_path / "head.npz").write_bytes(b"tampered")
    with pytest.raises(ModelArtifactError, match="do not match the sidecar"):
        load_head_weights(load_artifact(path))


def test_windows_are_cut_as_the_pipeline_cuts_them():
    rate, window = 10, 30  # 3 s windows at 10 Hz
    audio = np.arange(1, 76, dtype=np.float32)  # 7.5 s
    windows = cut_windows(audio, window, window, rate)
    assert windows.shape == (3, 30)  # 0-3, 3-6, 6-7.5 (a 1.5 s tail, zero-padded)
    assert windows[2, 14] == 75 and windows[2, 15] == 0
    assert cut_windows(audio[:64], window, window, rate).shape == (2, 30)  # a 0.4 s tail: dropped
    assert cut_windows(audio[:5], window, window, rate).shape == (1, 30)  # alone: kept


def test_teacher_filter_keeps_windows_the_teacher_hears_and_the_best_one():
    teacher = np.array([[-5.0, 0], [1.0, 0], [-3.0, 0], [-4.0, 0]])  # logits, 2 classes
    target = np.array([1.0, 0.0])
    assert keep_windows(teacher, target, 0.5).tolist() == [False, True, False, False]
    assert keep_windows(teacher - 10, target, 0.5).tolist() == [False, True, False, False]
    assert keep_windows(teacher, np.zeros(2), 0.5).all()  # a negative keeps every window
    assert keep_windows(teacher, target, 0.0).all()  # filtering off


def _toy_windows(rng, count, classes=2, dim=16):
    from birdd.training.datasets.records import Recording
    from birdd.training.recipes.targets import WindowSet

    targets = (rng.random((count, classes)) < 0.3).astype(np.float32)
    embeddings = np.abs(rng.normal(size=(count, dim)) + targets @ rng.normal(size=(classes, dim)))
    recordings = [Recording(Path(f"r{i}.wav"), labels=()) for i in range(count)]
    return WindowSet(
        embeddings.astype(np.float32),
        rng.normal(size=(count, classes)).astype(np.float32),
        targets,
        np.arange(count),
        recordings,
        [f"G s{k}_C {k}" for k in range(classes)],
    )


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, monkeypatch):
    from birdd.training import loop
    from birdd.training.recipes.head import HeadOptions, train_head

    rng = np.random.default_rng(5)
    train, val = _toy_windows(rng, 96), _toy_windows(rng, 32)
    options = HeadOptions(
        loop=loop.LoopConfig(epochs=8, batch_size=16, warmup_epochs=2, patience=100)
    )
    straight, history = train_head(train, val, options)

    checkpoint = tmp_path / "checkpoint.pt"
    original_step = loop.Progress.step

    def interrupted(self, note=""):
        original_step(self, note)
        if self.count == 6:  # killed before epoch 6's checkpoint: 5 epochs saved
            raise KeyboardInterrupt

    monkeypatch.setattr(loop.Progress, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_head(train, val, options, checkpoint)
    monkeypatch.setattr(loop.Progress, "step", original_step)
    resumed, resumed_history = train_head(train, val, options, checkpoint)
    assert len(resumed_history.train_loss) == 8
    assert resumed_history.train_loss == pytest.approx(history.train_loss)
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def _validation_windows() -> WindowSet:
    """Six one-window recordings: 0–2 of class A, 3–5 negatives; class B has no positive.
    BirdNET ranks negative 3 above A's recording 2 (its logits for A and B)."""
    labels = ["A a_A", "B b_B"]
    recordings = [Recording(Path(f"r{i}.wav"), (labels[0],) if i < 3 else ()) for i in range(6)]
    embeddings = np.eye(6, 4, dtype=np.float32)  # recording 2 and 3 differ in dimension 2, 3
    teacher = np.array([[5, 0], [4, 0], [1, 0], [2, 0], [0, 0], [-1, 0]], dtype=np.float32)
    targets = np.array([[1, 0]] * 3 + [[0, 0]] * 3, dtype=np.float32)
    return WindowSet(embeddings, teacher, targets, np.arange(6), recordings, labels)


def test_a_class_keeps_birdnets_ranking_unless_the_head_ranks_validation_better():
    val = _validation_windows()
    model = HeadModel(4, 2, 0, 0.0, 1.0, prior_mask=[1, 1]).eval()
    with torch.no_grad():
        model.out.weight[0, 2] = 3.0  # lifts A's recording 2 above negative 3: better
        model.out.weight[1, 3] = 3.0  # B has no validation positive: no evidence
        model.out.bias.fill_(-1.0)
    assert fall_back_to_birdnet(model, val) == [1]
    assert model.out.weight[0, 2] == 3.0 and model.out.bias[0] == -1.0
    assert not model.out.weight[1].any() and model.out.bias[1] == 0.0
    with torch.no_grad():
        model.out.weight[0, 2] = -3.0  # now the head ranks recording 2 lower still: worse
    assert fall_back_to_birdnet(model, val) == [0, 1]
    logits = recording_scores(predict_logits(model, val.embeddings, val.teacher), val)
    assert np.array_equal(logits, val.teacher)  # BirdNET's logits exactly
