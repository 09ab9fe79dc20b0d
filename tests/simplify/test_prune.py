"""Pruning: fixed masks survive any training loop, sparsity targets are hit, DNS splices back."""

import pytest
import torch
from torch import nn

from weightcodec.errors import EncodeError
from weightcodec.simplify import prune


def _train_steps(model: nn.Module, steps: int = 5, *, weight_decay: float = 0.0) -> None:
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=weight_decay)
    for _ in range(steps):
        x = torch.randn(16, 6)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_magnitude_mask_hits_sparsity_exactly(sparsity):
    weight = torch.randn(7, 11, generator=torch.Generator().manual_seed(1))
    mask = prune.magnitude_mask(weight, sparsity=sparsity)
    assert mask.dtype == torch.bool and mask.shape == weight.shape
    assert int((~mask).sum()) == round(sparsity * weight.numel())
    if 0 < sparsity < 1:
        assert weight[mask].abs().min() >= weight[~mask].abs().max()


def test_magnitude_mask_quality_is_std_threshold():
    weight = torch.tensor([0.1, -0.2, 1.0, -3.0, 0.5])
    threshold = 0.7 * float(weight.std(correction=0))
    mask = prune.magnitude_mask(weight, quality=0.7)
    assert mask.tolist() == [abs(v) > threshold for v in weight.tolist()]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "exactly one of"),
        ({"sparsity": 0.5, "quality": 1.0}, "exactly one of"),
        ({"sparsity": 1.5}, "sparsity must be in [0, 1], got 1.5"),
        ({"quality": -1.0}, "quality must be >= 0"),
    ],
)
def test_magnitude_mask_rejects_bad_arguments(kwargs, message):
    with pytest.raises(EncodeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        prune.magnitude_mask(torch.ones(3), **kwargs)


def test_magnitude_mask_rejects_nan():
    with pytest.raises(EncodeError, match="NaN or Inf"):
        prune.magnitude_mask(torch.tensor([1.0, float("nan")]), sparsity=0.5)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_pruned_weights_stay_exactly_zero_through_optimizer_steps(weight_decay):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    masks = prune.prune_model_(model, {"0.weight": 0.6, "2.weight": 0.5})
    _train_steps(model, weight_decay=weight_decay)
    model(torch.zeros(1, 6))  # the pre-hook recomputes weight = weight_orig * mask on forward
    for layer, mask in zip((model[0], model[2]), masks.values()):
        assert bool((layer.weight[~mask] == 0).all())
        assert bool((layer.weight[mask] != 0).all())
    assert prune.remove_model_(model) == ["0.weight", "2.weight"]
    assert prune.sparsity_of(model[0].weight) == pytest.approx(0.6, abs=1 / 48)
    assert isinstance(model[0].weight, nn.Parameter) and not prune.is_pruned(model[0])


def test_iterative_pruning_only_narrows_the_mask():
    layer = nn.Linear(10, 10)
    prune.prune_model_(layer, {"weight": 0.5})
    first = prune.mask_of(layer).clone()
    prune.prune_model_(layer, {"weight": 0.8})
    second = prune.mask_of(layer)
    assert bool((second <= first).all())
    assert prune.sparsity_of(layer.weight) == pytest.approx(0.8)


def test_prune_rejects_bad_mask_and_leaves_module_untouched():
    layer = nn.Linear(3, 2)
    before = layer.weight.detach().clone()
    with pytest.raises(EncodeError, match=r"mask shape \(3, 2\) does not match the weight's \(2, 3\)"):
        prune.prune_(layer, mask=torch.ones(3, 2, dtype=torch.bool))
    assert not prune.is_pruned(layer) and torch.equal(layer.weight, before)


def test_prune_model_reports_all_unknown_names_before_changing_anything():
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(EncodeError, match=r"unknown parameters \['1.weight', 'x'\]; weights of this model: \['0.weight'\]"):
        prune.prune_model_(model, {"0.weight": 0.5, "1.weight": 0.5, "x": 0.1})
    assert not prune.is_pruned(model[0])


def test_remove_without_mask_is_an_error():
    with pytest.raises(EncodeError, match="has no mask to remove"):
        prune.remove_(nn.Linear(2, 2))


def test_dns_forward_is_masked_but_gradient_reaches_pruned_weights():
    layer = nn.Linear(4, 3, bias=False)
    dns = prune.dns_(layer, sparsity=0.5)
    assert bool((layer.weight[~dns.mask] == 0).all())
    layer(torch.randn(5, 4)).sum().backward()
    grad = layer.parametrizations.weight.original.grad
    assert bool((grad[~dns.mask] != 0).all())  # straight-through: pruned weights still learn


def test_dns_splices_a_weight_back():
    layer = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(0.1, 1.6, 16).view(4, 4))
    prune.dns_(layer, sparsity=0.5)
    low, high = prune.dns_thresholds(layer.parametrizations.weight.original, sparsity=0.5)
    mask = prune.mask_of(layer)
    assert not bool(mask[0, 0])  # 0.1 < a: pruned
    with torch.no_grad():
        layer.parametrizations.weight.original[0, 0] = high + 1.0  # training pushed it up
        layer.parametrizations.weight.original[3, 3] = 0.0  # and this one down
    mask = prune.dns_update_(layer)
    assert bool(mask[0, 0]) and not bool(mask[3, 3])
    assert float(layer.weight.detach()[0, 0]) == pytest.approx(high + 1.0)
    prune.remove_(layer)
    assert float(layer.weight.detach()[3, 3]) == 0.0 and isinstance(layer.weight, nn.Parameter)


def test_dns_keeps_state_between_thresholds():
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0]]))
    dns = prune.dns_(layer, c=0.0, margin=0.5)  # center = 1.5, a = 0.75, b = 2.25
    assert dns.mask.tolist() == [[True, True]]  # both in [a, b): start from T = 1, stay kept
    with torch.no_grad():
        layer.parametrizations.weight.original.copy_(torch.tensor([[0.5, 2.0]]))
    assert prune.dns_update_(layer).tolist() == [[False, True]]
    with torch.no_grad():
        layer.parametrizations.weight.original.copy_(torch.tensor([[1.0, 2.0]]))
    assert prune.dns_update_(layer).tolist() == [[False, True]]  # between a and b: stays pruned


def test_dns_model_per_layer_targets():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.Linear(30, 10))
    prune.dns_model_(model, {"0.weight": 0.9, "1.weight": 0.5}, margin=0.0)
    assert prune.sparsity_of(model[0].weight) == pytest.approx(0.9, abs=0.01)
    assert prune.sparsity_of(model[1].weight) == pytest.approx(0.5, abs=0.01)
