import hashlib
import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightcodec.codecs import ribbon
from weightcodec.codecs.ribbon import (
    MAX_TRIES,
    ribbon_build,
    ribbon_decode_layer,
    ribbon_describe,
    ribbon_filter_build,
    ribbon_filter_decode,
    ribbon_query,
)
from weightcodec.errors import CorruptFileError, EncodeError


@pytest.mark.parametrize("n", [1, 2, 63, 64, 511, 512, 513, 5000, 19_000, 1_000_000])
@pytest.mark.parametrize("seed", [0, 7, 2**64 - 1])
def test_grid_of_sizes_and_seeds(n, seed, random_keys_values):
    if n == 1_000_000 and seed != 0:
        pytest.skip("one seed is enough at 10^6 keys (runtime)")
    rng = np.random.default_rng(n + seed % 1000)
    keys, values = random_keys_values(n, 32, rng)
    table, params = ribbon_build(keys, values, 8, seed=seed)
    np.testing.assert_array_equal(ribbon_query(table, params, keys), values)


@pytest.mark.parametrize("clusters,t", [(2, 1), (2, 16), (3, 2), (256, 8), (256, 16), (17, 5)])
def test_extreme_widths(clusters, t, random_keys_values):
    keys, values = random_keys_values(4000, clusters, np.random.default_rng(t))
    table, params = ribbon_build(keys, values, t, seed=1)
    np.testing.assert_array_equal(ribbon_query(table, params, keys), values)


def test_values_all_equal_and_unsorted_input_give_the_set_bytes(random_keys_values):
    rng = np.random.default_rng(3)
    keys, _ = random_keys_values(3000, 4, rng)
    values = np.zeros(keys.size, dtype=np.int64)
    table, params = ribbon_build(keys, values, 4, seed=5)
    np.testing.assert_array_equal(ribbon_query(table, params, keys), values)
    order = np.argsort(keys)
    assert ribbon_build(keys[order], values[order], 4, seed=5)[0] == table


def test_determinism_and_seed_dependence(random_keys_values):
    keys, values = random_keys_values(20_000, 32, np.random.default_rng(11))
    a = ribbon_build(keys, values, 8, seed=42)
    assert ribbon_build(keys, values, 8, seed=42) == a
    assert ribbon_build(keys, values, 8, seed=43)[0] != a[0]


def test_golden_bytes_pin_the_format():
    # Hashes, band layout, bumping and packing all feed these bytes: any change is a format change.
    table, _ = ribbon_build(np.arange(0, 3000, 3), np.arange(1000) % 5, 3, seed=9)
    # header 16 + levels 8 + 2 layers x 5; layer 0: 8 buckets x 2 bits = 2 bytes, 960/64*3 words;
    # layer 1 (last): 192/64*3 words
    assert len(table) == 16 + 8 + 10 + 2 + 960 // 64 * 3 * 8 + 192 // 64 * 3 * 8
    assert hashlib.sha256(table).hexdigest() == "640e85f85b2e146c0179700e2c16902228ab847dd4282214cfc865105d520736"


@pytest.mark.parametrize(
    "clusters,t,n,universe",
    [(32, 8, 20_000, 400_000), (3, 4, 5_000, 800_000), (200, 8, 2_000, 300_000), (2, 10, 50_000, 4_000_000)],
)
def test_false_positive_rate_is_k_over_2_to_t(clusters, t, n, universe):
    rng = np.random.default_rng(clusters * 1000 + t)
    keys = np.sort(rng.choice(universe, size=n, replace=False))
    values = rng.integers(0, clusters, size=n)
    table, params = ribbon_build(keys, values, t, seed=3)
    others = np.setdiff1d(np.arange(universe), keys)
    hits = int(np.count_nonzero(ribbon_query(table, params, others) < clusters))
    p = clusters / 2**t
    mean, sigma = others.size * p, math.sqrt(others.size * p * (1 - p))
    assert abs(hits - mean) < 5 * sigma, (hits, mean, sigma)


def test_non_key_values_are_uniform_over_t_bits(random_keys_values):
    keys, values = random_keys_values(10_000, 4, np.random.default_rng(5))
    table, params = ribbon_build(keys, values, 4, seed=0)
    probe = np.arange(2**41, 2**41 + 160_000)  # outside the key universe
    counts = np.bincount(ribbon_query(table, params, probe), minlength=16)
    expected = probe.size / 16
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    assert chi2 < 60  # 15 degrees of freedom: p < 1e-6 of exceeding by chance


@pytest.mark.parametrize("n,density,bound", [(784 * 300, 0.08, 1.05), (800 * 500, 0.08, 1.05), (4_000_000, 0.04, 1.03)])
def test_space_bits_per_key(n, density, bound):
    rng = np.random.default_rng(1)
    size = n if n < 10**6 else int(n / density)
    keys = np.flatnonzero(rng.random(size) < density)
    values = rng.integers(0, 32, size=keys.size)
    table, _ = ribbon_build(keys, values, 8, seed=0)
    assert 8 * len(table) / keys.size <= bound * 8


def test_empty_table_reads_random_values():
    table, params = ribbon_build(np.zeros(0, np.int64), np.zeros(0, np.int64), 8, seed=1)
    assert ribbon_describe(table)["layers"] == []
    out = ribbon_query(table, params, np.arange(100_000))
    assert abs(np.count_nonzero(out < 32) / out.size - 32 / 256) < 0.01
    lut = np.zeros(256, np.float32)
    lut[:32] = 1
    np.testing.assert_array_equal(ribbon_decode_layer(table, lut, 100_000), lut[out])


def test_decode_layer_matches_query(random_keys_values):
    keys, values = random_keys_values(30_000, 32, np.random.default_rng(2), universe=400_000)
    table, params = ribbon_build(keys, values, 8, seed=4)
    lut = np.zeros(256, np.float32)
    lut[:32] = np.linspace(-1, 1, 32)
    dense = ribbon_decode_layer(table, lut, 400_000)
    np.testing.assert_array_equal(dense, lut[ribbon_query(table, params, np.arange(400_000))])
    np.testing.assert_array_equal(dense[keys], lut[values])


def _spec_values(table: bytes, positions) -> list[int]:
    """The query of docs/codecs/ribbon.md, written out in Python integers (slow, independent)."""
    word = 2**64 - 1

    def mix64(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & word
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & word
        return z ^ (z >> 31)

    gamma = 0x9E3779B97F4A7C15
    _, t, _, b, bucket, n_layers, n_levels, seed = struct.unpack_from("<BBBBHBBQ", table, 0)
    offset = 16
    levels = struct.unpack_from(f"<{n_levels}H", table, offset)
    offset += 2 * n_levels
    rows_and_tries = [struct.unpack_from("<IB", table, offset + 5 * i) for i in range(n_layers)]
    offset += 5 * n_layers
    layers = []
    for i, (m, attempt) in enumerate(rows_and_tries):
        code_bytes = -(-(-(-(m - 63) // bucket)) * b // 8) if i < n_layers - 1 else 0
        codes = table[offset : offset + code_bytes]
        offset += code_bytes
        words = struct.unpack_from(f"<{m // 64 * t}Q", table, offset)
        offset += m // 64 * t * 8
        columns = [sum(words[k * t + j] << (64 * k) for k in range(m // 64)) for j in range(t)]
        key = mix64((seed + (i << 56) + (attempt << 48) + gamma) & word)
        layers.append((m, codes, columns, key))
    assert offset == len(table)
    values = []
    for p in positions:
        for i, (m, codes, columns, key) in enumerate(layers):
            h1 = mix64(int(p) ^ key)
            h2 = mix64((h1 + gamma) & word)
            start, coeff, mask = ((h1 >> 32) * (m - 63)) >> 32, h2 | 1, h1 & ((1 << t) - 1)
            if i < n_layers - 1:
                bit = (start // bucket) * b
                if start % bucket < levels[(codes[bit // 8] >> (bit % 8)) & ((1 << b) - 1)]:
                    continue  # bumped to the next layer
            parities = sum((bin(coeff & (columns[j] >> start) & word).count("1") & 1) << j for j in range(t))
            values.append(mask ^ parities)
            break
    return values


@pytest.mark.parametrize("t", [1, 3, 4, 5, 8, 9, 16])
def test_query_and_decode_follow_the_written_spec(t):
    # 20,000 keys give three layers (two bumping, one plain); probe keys and non-keys alike
    rng = np.random.default_rng(t)
    keys = rng.choice(100_000, size=20_000, replace=False)
    table, params = ribbon_build(keys, rng.integers(0, 2**t, size=keys.size), t, seed=t)
    assert len(ribbon_describe(table)["layers"]) == 3
    probe = np.concatenate([keys[:700], rng.integers(0, 100_000, size=700)])
    expected = _spec_values(table, probe)
    np.testing.assert_array_equal(ribbon_query(table, params, probe), expected)
    lut = np.arange(2**t, dtype=np.float32)
    np.testing.assert_array_equal(ribbon_decode_layer(table, lut, 100_000)[probe], expected)


def test_filter_adapter_roundtrip_and_meta_check():
    keys, values = np.array([2, 9, 40]), np.array([1, 0, 3])
    params, table = ribbon_filter_build(keys, values, t=4, seed=3)
    assert params == {"seed": 3, "m": 128}
    lut = np.arange(16, dtype=np.float32)
    meta = {"t": 4, **params}
    np.testing.assert_array_equal(ribbon_filter_decode(meta, table, lut, np.empty(41, np.float32))[keys], [1, 0, 3])
    with pytest.raises(CorruptFileError, match="says seed=4 but its ribbon table has seed=3"):
        ribbon_filter_decode({**meta, "seed": 4}, table, lut, np.empty(41, np.float32))


# --- errors at the public boundary ------------------------------------------------------------


def test_bad_tuning_is_refused():
    with pytest.raises(EncodeError, match="bucket = 100 is not a power of two"):
        ribbon_build(np.arange(10), np.zeros(10, int), 4, bucket=100)
    with pytest.raises(EncodeError, match="levels"):
        ribbon_build(np.arange(10), np.zeros(10, int), 4, levels=(0, 5, 3, 128))


def test_exhausted_tries_raise_a_clear_error(monkeypatch):
    calls = []

    def never(order, starts, coeffs, results, m):
        calls.append(m)
        return np.zeros(m, np.uint64), np.zeros(m, np.uint16), False

    monkeypatch.setattr(ribbon, "_plain_layer", never)
    with pytest.raises(EncodeError, match=f"did not solve in {MAX_TRIES} tries with seed 5"):
        ribbon_build(np.arange(100), np.zeros(100, int), 4, seed=5)
    assert len(calls) == MAX_TRIES and calls == sorted(calls)  # sizes never shrink between tries


# --- hostile tables -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_table(random_keys_values):
    keys, values = random_keys_values(5000, 32, np.random.default_rng(0))
    return ribbon_build(keys, values, 8, seed=0)


def _patched(table, offset, fmt, value):
    data = bytearray(table)
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda b: b[:10], "the header alone needs"),
        (lambda b: b[:-1], "need exactly"),
        (lambda b: b + b"\0", "need exactly"),
        (lambda b: _patched(b, 0, "<B", 2), "version 2"),
        (lambda b: _patched(b, 1, "<B", 0), "t = 0"),
        (lambda b: _patched(b, 1, "<B", 9), "need exactly"),
        (lambda b: _patched(b, 2, "<B", 128), "band width 128"),
        (lambda b: _patched(b, 3, "<B", 3), "meta_bits = 3"),
        (lambda b: _patched(b, 4, "<H", 100), "power-of-two bucket"),
        (lambda b: _patched(b, 6, "<B", 200), "at most 13 layers"),
        (lambda b: _patched(b, 16, "<H", 5), "not increasing from 0"),
        (lambda b: _patched(b, 24, "<I", 100), "multiples of 64"),
        (lambda b: _patched(b, 28, "<B", 200), "tries below"),
        (lambda b: _patched(b, 24, "<I", 2**31), "need exactly"),
    ],
)
def test_hostile_tables_are_rejected(good_table, mutate, match):
    table, params = good_table
    with pytest.raises(CorruptFileError, match=match):
        ribbon_query(mutate(table), params, np.arange(10))


def test_t_mismatch_with_params_is_rejected(good_table):
    table, params = good_table
    with pytest.raises(CorruptFileError, match="has t = 8 but its parameters say t = 7"):
        ribbon_query(table, {**params, "t": 7}, np.arange(3))


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(data):
    try:
        ribbon_query(data, {}, np.arange(5))
    except CorruptFileError:
        pass


# --- through the weightless codec ---------------------------------------------------------------


@pytest.mark.parametrize("shape,density", [((300, 784), 0.08), ((1, 1), 1.0), ((7, 9), 0.0), ((50, 20), 0.5)])
def test_weightless_codec_roundtrip_with_ribbon(shape, density, sparse_layer):
    from weightcodec.codecs import weightless

    array, mask = sparse_layer(shape, density, clusters=32, seed=0)
    encoded = weightless.encode(array, t=8, seed=2, filter="ribbon")
    assert encoded.meta["filter"] == "ribbon"
    decoded = weightless.decode(encoded.meta, encoded.sections, shape)
    np.testing.assert_array_equal(decoded[mask], array[mask])
    if mask.sum() > 1000:
        assert 8 * len(encoded.sections["table"]) / mask.sum() <= 1.05 * 8
    with pytest.raises(CorruptFileError, match="seed"):
        weightless.decode({**encoded.meta, "seed": 3}, encoded.sections, shape)


def test_numba_and_llvmlite_are_the_tested_versions():
    """The decode kernel's hand-written LLVM IR was tested with one numba/llvmlite series only.

    Fails loudly on any other installed version, and if pyproject.toml or constraints.txt stop
    bounding them to that series.
    """
    import re
    from pathlib import Path

    import llvmlite
    import numba

    from weightcodec.codecs import ribbon

    for package, module, tested in (("numba", numba, ribbon.TESTED_NUMBA), ("llvmlite", llvmlite, ribbon.TESTED_LLVMLITE)):
        assert module.__version__.startswith(tested + "."), (
            f"{package} {module.__version__} is installed; ribbon's LLVM IR is tested with {tested}.x only: "
            f"install {package}=={tested}.* or re-test ribbon and raise TESTED_{package.upper()}"
        )
        major, minor = map(int, tested.split("."))
        bound = f"{package}>={tested},<{major}.{minor + 1}"
        root = Path(__file__).resolve().parents[2]
        for name in ("pyproject.toml", "constraints.txt"):
            text = re.sub(r"\s", "", (root / name).read_text())
            assert bound in text, f"{name} must bound {package} to {bound}"
