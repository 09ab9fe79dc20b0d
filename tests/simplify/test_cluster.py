"""Weight sharing: 1-D k-means, quantize keeps the zero pattern, centroid gradients are sums."""

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from weightcodec.errors import EncodeError
from weightcodec.simplify import cluster


def _values(n: int = 2000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def test_linear_init_spans_min_to_max():
    values = _values()
    start = cluster.INITS["linear"](np.sort(values.astype(np.float64)), 5, 0)
    np.testing.assert_allclose(start, np.linspace(values.min(), values.max(), 5), rtol=1e-6)


def test_density_init_sits_at_cdf_quantiles():
    values = np.sort(_values().astype(np.float64))
    start = cluster.INITS["density"](values, 4, 0)
    np.testing.assert_allclose(start, np.quantile(values, [0.125, 0.375, 0.625, 0.875]))


def test_random_init_is_distinct_observations_and_deterministic_per_seed():
    values = np.sort(_values().astype(np.float64))
    first = cluster.INITS["random"](values, 8, 3)
    np.testing.assert_array_equal(first, cluster.INITS["random"](values, 8, 3))
    assert not np.array_equal(first, cluster.INITS["random"](values, 8, 4))
    assert np.isin(first, values).all() and np.unique(first).size == 8


@pytest.mark.parametrize("init", sorted(cluster.INITS))
def test_kmeans_labels_are_nearest_sorted_centroids(init):
    values = _values()
    centroids, labels = cluster.kmeans_1d(values, 16, init=init, seed=1)
    assert centroids.dtype == np.float32 and labels.dtype == np.int64 and labels.shape == values.shape
    assert np.all(np.diff(centroids) >= 0)
    nearest = np.abs(values[:, None] - centroids[None, :].astype(np.float64)).argmin(axis=1)
    distance = np.abs(values - centroids[labels])
    np.testing.assert_allclose(distance, np.abs(values - centroids[nearest]), atol=1e-6)
    used = np.unique(labels)
    for j in used:  # converged: every used centroid is the mean of its members
        assert centroids[j] == pytest.approx(values[labels == j].astype(np.float64).mean(), abs=1e-5)


def test_kmeans_separates_obvious_clusters():
    values = np.concatenate([np.full(10, -1.0), np.full(5, 0.5), np.full(7, 2.0)]) + np.tile([0, 1e-3], 11)
    centroids, labels = cluster.kmeans_1d(values, 3, init="linear")
    np.testing.assert_allclose(centroids, [-0.9995, 0.5004, 2.0004], atol=1e-3)
    assert np.bincount(labels).tolist() == [10, 5, 7]


@pytest.mark.parametrize("init", sorted(cluster.INITS))
@pytest.mark.parametrize("k", [16, 32])
def test_kmeans_uses_every_cluster_across_the_pruned_gap(init, k):
    # magnitude pruning leaves a gap around 0: linear init puts centroids in it, which Lloyd alone leaves empty
    weights = _values(20000)
    kept = weights[np.abs(weights) > np.quantile(np.abs(weights), 0.9)]
    centroids, labels = cluster.kmeans_1d(kept, k, init=init, seed=2)
    assert np.all(np.diff(centroids) > 0) and np.unique(labels).size == k
    for j in range(k):
        assert centroids[j] == pytest.approx(kept[labels == j].astype(np.float64).mean(), abs=1e-5)


@settings(max_examples=200, deadline=None)
@example(pieces=[(-100.0, 20), (1e-30, 1), (2e-30, 1), (3e-30, 1)], k_fraction=1.0, init="linear")  # tiny after large
@given(
    pieces=st.lists(st.tuples(st.floats(-100, 100, width=32), st.integers(1, 20)), min_size=1, max_size=40),
    k_fraction=st.floats(0, 1),
    init=st.sampled_from(sorted(cluster.INITS)),
)
def test_kmeans_gives_k_distinct_used_clusters_whenever_k_distinct_values(pieces, k_fraction, init):
    values = np.repeat([v for v, _ in pieces], [n for _, n in pieces]).astype(np.float32)
    distinct = np.unique(values).size
    k = 1 + int(k_fraction * (distinct - 1))
    centroids, labels = cluster.kmeans_1d(values, k, init=init, seed=5)
    assert centroids.size == k and np.all(np.diff(centroids) > 0)
    assert np.array_equal(np.unique(labels), np.arange(k))
    assert np.all(np.diff(centroids[labels][np.argsort(values, kind="stable")]) >= 0)  # clusters are contiguous runs
    again = cluster.kmeans_1d(values, k, init=init, seed=5)
    assert np.array_equal(again[0], centroids) and np.array_equal(again[1], labels)


def test_quantize_a_pruned_layer_uses_exactly_k_values():
    torch.manual_seed(0)
    weight = torch.randn(300, 784)
    weight[weight.abs() < weight.abs().quantile(0.9)] = 0
    for k in (4, 16, 32):
        quantized = cluster.quantize(weight, k)
        assert torch.unique(quantized[quantized != 0]).numel() == k


@pytest.mark.parametrize(
    "args, message",
    [
        ((np.array([]), 1), "no values to cluster"),
        ((np.array([1.0, np.nan]), 1), "NaN or Inf"),
        ((np.array([1.0, 2.0]), 0), "k must be an integer >= 1, got 0"),
        ((np.array([1.0, 2.0, 2.0]), 3), "k=3 clusters but only 2 distinct values; use k <= 2"),
    ],
)
def test_kmeans_rejects_bad_input(args, message):
    with pytest.raises(EncodeError, match=message):
        cluster.kmeans_1d(*args)


def test_kmeans_unknown_init_lists_choices():
    with pytest.raises(EncodeError, match=r"unknown init 'kmeans\+\+'; choose one of \['density', 'linear', 'random'\]"):
        cluster.kmeans_1d(np.arange(4.0), 2, init="kmeans++")


@pytest.mark.parametrize("shape", [(1, 1), (3, 5, 2, 2), (40, 30)])
def test_quantize_keeps_zeros_and_uses_at_most_k_values(shape):
    torch.manual_seed(0)
    weight = torch.randn(shape) * (torch.rand(shape) > 0.6)
    if not bool((weight != 0).any()):
        weight.view(-1)[0] = 0.3
    k = min(8, int((weight != 0).sum()))
    quantized = cluster.quantize(weight, k)
    assert quantized.shape == weight.shape and quantized.dtype == weight.dtype
    assert torch.equal(quantized == 0, weight == 0)
    assert torch.unique(quantized[quantized != 0]).numel() <= k


def test_quantize_all_zero_is_a_copy_and_too_many_clusters_is_an_error():
    zeros = torch.zeros(2, 3)
    assert torch.equal(cluster.quantize(zeros, 4), zeros)
    with pytest.raises(EncodeError, match="k=4 clusters but only 2 distinct values"):
        cluster.quantize(torch.tensor([0.0, 1.0, 2.0, 1.0]), 4)


def test_quantize_never_turns_a_kept_weight_into_zero():
    quantized = cluster.quantize(torch.tensor([-1.0, 1.0, 0.0]), 1)  # mean of the non-zeros is 0
    assert torch.equal(quantized == 0, torch.tensor([False, False, True]))


def test_centroid_gradient_is_sum_of_weight_gradients():
    torch.manual_seed(0)
    layer = nn.Linear(12, 5)
    with torch.no_grad():
        layer.weight.mul_(torch.rand(5, 12) > 0.5)
    mask = layer.weight.detach() != 0
    shared = cluster.share_weights_(layer, k=4)
    x, target = torch.randn(7, 12), torch.randn(7, 5)

    weight = layer.weight.detach().clone().requires_grad_(True)  # the same weights, untied
    nn.functional.mse_loss(nn.functional.linear(x, weight, layer.bias), target).backward()
    expected = torch.zeros(4).index_add_(0, shared.codes[mask], weight.grad[mask])

    nn.functional.mse_loss(layer(x), target).backward()
    centroids = layer.parametrizations.weight.original
    torch.testing.assert_close(centroids.grad, expected)


def test_fine_tuning_keeps_weights_tied_and_mask_fixed():
    torch.manual_seed(0)
    layer = nn.Linear(10, 6)
    with torch.no_grad():
        layer.weight.mul_(torch.rand(6, 10) > 0.4)
    zeros = layer.weight.detach() == 0
    shared = cluster.share_weights_(layer, k=5)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(4, 10)).pow(2).mean().backward()
        opt.step()
    centroids = layer.parametrizations.weight.original.detach().clone()
    cluster.make_permanent_(layer)
    assert isinstance(layer.weight, nn.Parameter) and not cluster.is_shared(layer)
    assert torch.equal(layer.weight.detach() == 0, zeros)
    torch.testing.assert_close(layer.weight.detach()[~zeros], centroids[shared.codes[~zeros]])


def test_share_weights_refuses_a_pruned_parameter():
    from weightcodec.simplify import prune

    layer = nn.Linear(3, 3)
    prune.prune_(layer, mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(EncodeError, match="must be a plain Parameter"):
        cluster.share_weights_(layer, k=2)
