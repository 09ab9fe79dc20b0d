"""The automatic search on a user's own model: a recipe's [auto] table, the training hook, the evaluation function."""

from dataclasses import replace

import pytest
import torch
from torch import nn

import weightcodec
from weightcodec import container
from weightcodec.errors import EncodeError
from weightcodec.pipelines.auto_model import HookTraining, compress_to_error
from weightcodec.pipelines.training import ArrayLoader, evaluate, train


class ToyNet(nn.Module):
    """A small MLP for the toy images: 784 -> 32 -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


@pytest.fixture
def toy(tiny, toy_mnist):
    """A trained ToyNet, its hook (one epoch of the toy training) and its validation error function."""
    loader = ArrayLoader(toy_mnist.x_train, toy_mnist.y_train, batch_size=32, shuffle=True)
    valid = ArrayLoader(toy_mnist.x_valid, toy_mnist.y_valid, batch_size=64)
    calls = []

    def hook(model: nn.Module, stage: str) -> None:
        calls.append((stage, sorted(n for n, p in model.named_parameters() if p.requires_grad)))
        train(model, loader, tiny, progress=False)

    torch.manual_seed(0)
    model = ToyNet()
    train(model, loader, replace(tiny, epochs=4), progress=False)
    return model, hook, lambda m: evaluate(m, valid), calls, len(toy_mnist.y_valid)


def _recipe(hook, evaluate, n_valid, **auto) -> dict:
    # entry points are strings in a recipe file; in Python the hook and evaluate functions are
    # put on a module the loader can import: this test module itself
    globals().update(_toy_hook=hook, _toy_evaluate=evaluate)
    return {
        "rule": [{"match": "fc2.weight", "method": "raw"}, {"match": "*", "method": "deep"}],
        "training": {"hook": f"{__name__}:_toy_hook"},
        "auto": {"evaluate": f"{__name__}:_toy_evaluate", "n_valid": n_valid, "sparsities": [0.5, 0.8], "bits": [2, 3, 4], **auto},
    }


def test_compress_to_error_keeps_the_decoded_model_within_the_target_and_beats_a_fixed_recipe(toy, tmp_path):
    model, hook, valid_error, calls, n_valid = toy
    baseline = valid_error(model)
    target = baseline + 15.0
    fixed = len(weightcodec.compress(model.state_dict(), {"rule": [{"match": "*", "method": "deep"}]}))
    result = compress_to_error(model, _recipe(hook, valid_error, n_valid), tmp_path / "m.wcz", target_error=target)
    data = (tmp_path / "m.wcz").read_bytes()
    assert data == result["data"] and result["file_bytes"] == len(data) < fixed
    restored = ToyNet()
    weightcodec.load_into(restored, tmp_path / "m.wcz")
    assert valid_error(restored) == result["valid_error"] <= target  # the file's own model, within the target
    assert result["valid_budget"] < target and result["baseline_valid_error"] == baseline
    codecs = {r.name: r.encoded.codec for r in container.from_bytes(data).records}
    assert codecs["fc2.weight"] == "raw"  # a raw rule keeps its weight exact: never clustered
    assert codecs["fc1.weight"] in {"deep", "weightless"}
    assert set(result["search"]["layers"]) == {"fc1.weight"} and set(result["search"]["small"]) == {"fc1.bias", "fc2.bias"}
    assert container.from_bytes(data).metadata["target_error"] == f"{target}"
    assert {stage for stage, _ in calls} == {"pruned", "clustered"}
    assert all(p.requires_grad for p in model.parameters())  # the search's freezing is undone


def test_retraining_after_a_layer_trains_only_the_layers_after_it(toy):
    model, hook, _, calls, _ = toy
    HookTraining(hook).retrain_after(model, "fc1.weight", "after fc1")
    assert calls == [("clustered", ["fc2.bias", "fc2.weight"])]
    assert all(p.requires_grad for p in model.parameters())  # given back afterwards
    HookTraining(hook).retrain_after(model, "fc2.weight", "after the last layer")
    assert len(calls) == 1  # nothing after the last layer: no call


def test_everything_the_search_lacks_is_listed_at_once(toy):
    model, *_ = toy
    with pytest.raises(EncodeError) as info:
        compress_to_error(dict(model.state_dict()), {"rule": [{"match": "*", "method": "deep"}]})
    message = str(info.value)
    assert message.startswith("the automatic search cannot run: it needs the model itself to retrain (got a dict)")
    for missing in ("add [training] hook", "add [auto] evaluate", "add [auto] n_valid", "--target-error E"):
        assert missing in message


def test_a_recipe_with_auto_is_refused_by_the_plain_api_and_rule_settings_are_refused(toy):
    model, hook, valid_error, _, n_valid = toy
    recipe = _recipe(hook, valid_error, n_valid, target_error=50.0)
    with pytest.raises(EncodeError, match=r"weightcodec.compress_to_error\(model, recipe"):
        weightcodec.compress(model, recipe)
    recipe["rule"][1]["clusters"] = 8
    with pytest.raises(EncodeError, match=r"rule 2: with \[auto\] the search chooses \['clusters'\] itself"):
        compress_to_error(model, recipe)
    with pytest.raises(EncodeError, match=r"\[auto\] target_error must be a number of percent in \(0, 100\), got 0"):
        compress_to_error(model, _recipe(hook, valid_error, n_valid, target_error=0))


def test_a_failing_search_puts_the_model_back_as_it_was(toy):
    model, hook, valid_error, _, n_valid = toy
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    seen = []

    def flaky(m):
        seen.append(1)
        if len(seen) == 3:  # after the first pruning level
            raise RuntimeError("validation data went away")
        return valid_error(m)

    with pytest.raises(RuntimeError, match="validation data went away"):
        compress_to_error(model, _recipe(hook, flaky, n_valid, target_error=90.0))
    assert sorted(model.state_dict()) == sorted(before)  # no mask or shared-weight parametrization left
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in before.items())
    assert all(p.requires_grad for p in model.parameters())
