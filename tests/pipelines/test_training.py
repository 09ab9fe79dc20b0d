"""Training loop: determinism, frozen layers, masks respected, evaluation, checkpoint cache."""

import numpy as np
import pytest
import torch

from weightcodec.errors import WeightcodecError
from weightcodec.pipelines import training
from weightcodec.pipelines.data import Mnist
from weightcodec.pipelines.models import build_model
from weightcodec.simplify import prune

CONFIG = training.TrainConfig(epochs=1, lr=0.05, batch_size=16)


def _toy(n: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = (rng.random((n, 784)) * 0.1).astype(np.float32)
    x[np.arange(n), y * 50] = 1.0  # a learnable signal
    return x, y.astype(np.int64)


def _loader(seed: int = 0):
    x, y = _toy()
    return training.ArrayLoader(x, y, batch_size=16, shuffle=True, seed=seed)


def test_training_is_deterministic_given_seed():
    a, b = build_model("lenet300"), build_model("lenet300")
    training.train(a, _loader(), CONFIG, progress=False)
    training.train(b, _loader(), CONFIG, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_train_only_freezes_the_other_layers_and_restores_them():
    model = build_model("lenet5")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    training.train(model, _loader(), CONFIG, train_only=training.layers_after(model, "conv2"), progress=False)
    for name, param in model.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == name.startswith("fc"), name
        assert param.requires_grad


def test_masked_weights_stay_zero_in_this_loop():
    model = build_model("lenet300")
    masks = prune.prune_model_(model, {"fc1.weight": 0.9})
    training.train(model, _loader(), CONFIG, progress=False)
    prune.remove_model_(model)
    assert bool((model.fc1.weight[~masks["fc1.weight"]] == 0).all())


def test_evaluate_error_percent_and_learning_happens():
    model = build_model("lenet300")
    x, y = _toy()
    loader = training.ArrayLoader(x, y, batch_size=32)
    before = training.evaluate(model, loader)
    training.train(model, _loader(), training.TrainConfig(epochs=5, lr=0.05, batch_size=16), progress=False)
    after = training.evaluate(model, loader)
    assert 0 <= after < before <= 100


def test_invalid_settings_are_listed():
    bad = training.TrainConfig(optimizer="lbfgs", schedule="step")
    with pytest.raises(WeightcodecError, match=r"optimizer 'lbfgs' \(choose from \['adam', 'sgd'\]\); schedule 'step'"):
        training.train(build_model("lenet300"), _loader(), bad, progress=False)


def test_layers_after_unknown_layer():
    with pytest.raises(WeightcodecError, match=r"no layer 'fc9'; layers with parameters: \['fc1', 'fc2', 'fc3'\]"):
        training.layers_after(build_model("lenet300"), "fc9")


def test_baseline_checkpoint_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("WEIGHTCODEC_CACHE", str(tmp_path))
    x, y = _toy()
    mnist = Mnist(x, y, x[:8], y[:8], x[:8], y[:8], "toy")
    first = training.train_baseline("lenet300", mnist, CONFIG, seed=3, progress=False)
    [path] = (tmp_path / "checkpoints").iterdir()
    assert path.name.startswith("lenet300-seed3-e1-")
    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("should load the checkpoint"))
    second = training.train_baseline("lenet300", mnist, CONFIG, seed=3, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(first.parameters(), second.parameters()))
