import math

import numpy as np
import pytest

from weightcodec.codecs import fuse
from weightcodec.codecs.fuse import (
    MAX_TRIES,
    fuse_build,
    fuse_decode_layer,
    fuse_filter_build,
    fuse_filter_decode,
    fuse_hash,
    fuse_layout,
    fuse_query,
)
from weightcodec.errors import CorruptFileError, EncodeError


@pytest.mark.parametrize("n", [1, 2, 10, 1000, 19_000, 1_000_000])
def test_grid_of_sizes(n, random_keys_values):
    keys, values = random_keys_values(n, 32, np.random.default_rng(n))
    table = fuse_build(keys, values, t=8, seed=3)
    np.testing.assert_array_equal(fuse_query(table, keys), values)


def test_cells_lie_in_three_consecutive_segments_and_match_numpy_twin():
    segment, m = fuse_layout(50_000)
    cells, masks = fuse_hash(np.arange(50_000), 9, segment, m, 8)
    seg = cells // segment
    assert ((seg[:, 1] == seg[:, 0] + 1) & (seg[:, 2] == seg[:, 0] + 2)).all()
    assert cells.max() < m
    twin_cells, twin_masks = fuse._fuse_cells_numpy(np.arange(50_000), 9, segment, m, 8)
    np.testing.assert_array_equal(cells, twin_cells)
    np.testing.assert_array_equal(masks, twin_masks)


def test_layout_reaches_1_125_cells_per_key_on_large_layers():
    segment, m = fuse_layout(4_110_000)
    assert segment & (segment - 1) == 0 and m / 4_110_000 < 1.13
    assert fuse_layout(0) == (0, 0)


@pytest.mark.parametrize("clusters,t", [(32, 8), (3, 4)])
def test_false_positive_rate_is_k_over_2_to_t(clusters, t):
    universe, n = 400_000, 20_000
    rng = np.random.default_rng(t)
    keys = np.sort(rng.choice(universe, size=n, replace=False))
    table = fuse_build(keys, rng.integers(0, clusters, size=n), t=t, seed=1)
    others = np.setdiff1d(np.arange(universe), keys)
    hits = int(np.count_nonzero(fuse_query(table, others) < clusters))
    p = clusters / 2**t
    assert abs(hits - others.size * p) < 5 * math.sqrt(others.size * p * (1 - p))


def test_determinism_order_independence_and_adapter_roundtrip(random_keys_values):
    keys, values = random_keys_values(5000, 32, np.random.default_rng(4), universe=100_000)
    params, table = fuse_filter_build(keys, values, t=8, seed=11)
    order = np.argsort(keys)
    assert fuse_filter_build(keys[order], values[order], t=8, seed=11) == (params, table)
    lut = np.zeros(256, np.float32)
    lut[:32] = np.arange(1, 33)
    meta = {"t": 8, "n": keys.size, **params}
    dense = fuse_filter_decode(meta, table, lut, np.empty(int(keys.max()) + 1, np.float32))
    np.testing.assert_array_equal(dense[keys], values + 1)


def test_empty_table():
    params, table = fuse_filter_build(np.zeros(0, np.int64), np.zeros(0, np.int64), t=8, seed=0)
    assert params == {"m": 0, "segment": 0, "seed": 0} and table == b""
    lut = np.zeros(256, np.float32)
    lut[:32] = 1
    out = fuse_filter_decode({"t": 8, "n": 0, **params}, table, lut, np.empty(100_000, np.float32))
    assert abs(out.mean() - 32 / 256) < 0.01  # positions read their masks: uniform values


@pytest.mark.parametrize(
    "change,match",
    [
        ({"segment": 3}, "power-of-two"),
        ({"m": 5}, "power-of-two"),
        ({"segment": 2**19}, "power-of-two"),
        ({"seed": -1}, "expected ints"),
        ({"m": None}, "expected ints"),
        ({"m": 10**12}, "power-of-two"),
    ],
)
def test_hostile_meta_is_rejected(change, match, random_keys_values):
    keys, values = random_keys_values(100, 4, np.random.default_rng(0))
    params, table = fuse_filter_build(keys, values, t=4, seed=0)
    meta = {"t": 4, "n": 100, **params, **change}
    with pytest.raises(CorruptFileError, match=match):
        fuse_filter_decode(meta, table, np.zeros(16, np.float32), np.empty(10, np.float32))


def test_truncated_table_is_rejected(random_keys_values):
    keys, values = random_keys_values(100, 4, np.random.default_rng(0))
    params, table = fuse_filter_build(keys, values, t=4, seed=0)
    with pytest.raises(CorruptFileError, match="holds"):
        fuse_filter_decode({"t": 4, "n": 100, **params}, table[:-1], np.zeros(16, np.float32), np.empty(10, np.float32))


def test_exhausted_tries_raise(monkeypatch):
    monkeypatch.setattr(fuse, "peel", lambda cells, counts, key_xor: (np.zeros(0, np.int64), np.zeros(0, np.int64)))
    with pytest.raises(EncodeError, match=f"no seed of 5..{5 + MAX_TRIES - 1} peels"):
        fuse_build(np.arange(10), np.zeros(10, int), t=4, seed=5)


def test_decode_layer_lut_size_is_checked():
    table = fuse_build(np.array([1]), np.array([0]), t=8)
    with pytest.raises(CorruptFileError, match="lut has 16 entries; t=8 needs 256"):
        fuse_decode_layer(table, np.zeros(16, np.float32), 3)


@pytest.mark.parametrize("shape,density", [((300, 784), 0.08), ((1, 1), 1.0), ((7, 9), 0.0)])
def test_weightless_codec_roundtrip_with_fuse(shape, density, sparse_layer):
    from weightcodec.codecs import weightless

    array, mask = sparse_layer(shape, density, clusters=16, seed=1)
    encoded = weightless.encode(array, t=6, seed=2, filter="fuse")
    decoded = weightless.decode(encoded.meta, encoded.sections, shape)
    np.testing.assert_array_equal(decoded[mask], array[mask])
