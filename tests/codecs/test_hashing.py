import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightcodec.codecs.hashing import cells_and_mask_jit, hash_positions, mix64, mix64_jit, seed_key

MASK64 = 2**64 - 1
GAMMA = 0x9E3779B97F4A7C15


def ref_mix64(z: int) -> int:
    """The spec of docs/codecs/weightless.md in plain Python integers."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def ref_hash(position: int, seed: int, segment: int, t: int) -> tuple[int, int, int, int]:
    key = ref_mix64((seed + GAMMA) & MASK64)
    h1 = ref_mix64(position ^ key)
    h2 = ref_mix64((h1 + GAMMA) & MASK64)
    return (
        ((h1 & 0xFFFFFFFF) * segment) >> 32,
        segment + (((h1 >> 32) * segment) >> 32),
        2 * segment + (((h2 & 0xFFFFFFFF) * segment) >> 32),
        h2 >> (64 - t),
    )


@numba.njit
def jit_hash(position, key, segment, t):
    return cells_and_mask_jit(position, key, segment, t)


def test_splitmix64_reference_vectors():
    # The first outputs of Vigna's splitmix64.c seeded with 0.
    state = np.array([GAMMA * i % 2**64 for i in range(1, 4)], dtype=np.uint64)
    assert [hex(int(v)) for v in mix64(state)] == ["0xe220a8397b1dcdaf", "0x6e789e6aa1b965f4", "0x6c45d188009454f"]


def test_pinned_cells_and_masks():
    # Frozen output: a change here changes every stored file.
    cells, masks = hash_positions(np.array([0, 1, 2**40 - 1]), seed=12345, segment=1_000_003, t=13)
    expected = [ref_hash(p, 12345, 1_000_003, 13) for p in (0, 1, 2**40 - 1)]
    assert cells.tolist() == [list(e[:3]) for e in expected]
    assert masks.tolist() == [e[3] for e in expected]
    assert cells.tolist() == [[166607, 1298810, 2416974], [33677, 1778746, 2829396], [448210, 1985665, 2124815]]
    assert masks.tolist() == [404, 6513, 7577]


@settings(max_examples=60, deadline=None)
@given(
    positions=st.lists(st.integers(0, 2**40 - 1), min_size=1, max_size=20),
    seed=st.integers(0, 2**64 - 1),
    segment=st.integers(1, 2**32),
    t=st.integers(1, 16),
)
def test_numpy_numba_and_reference_agree(positions, seed, segment, t):
    cells, masks = hash_positions(np.array(positions), seed, segment, t)
    for i, p in enumerate(positions):
        ref = ref_hash(p, seed, segment, t)
        assert tuple(cells[i]) + (int(masks[i]),) == ref
        jit = jit_hash(np.uint64(p), seed_key(seed), np.uint64(segment), np.uint64(t))
        assert tuple(int(v) for v in jit) == ref


@given(st.integers(0, 2**64 - 1))
def test_mix64_numpy_and_numba_match_reference(z):
    assert int(mix64(np.array([z], dtype=np.uint64))[0]) == ref_mix64(z)
    assert int(mix64_jit(np.uint64(z))) == ref_mix64(z)


def test_cells_fall_in_their_segments_and_masks_in_t_bits():
    segment, t = 977, 5
    cells, masks = hash_positions(np.arange(50_000), seed=3, segment=segment, t=t)
    for j in range(3):
        assert cells[:, j].min() >= j * segment and cells[:, j].max() < (j + 1) * segment
    assert masks.max() < 2**t


@pytest.mark.parametrize("column", [0, 1, 2, 3])
def test_cells_and_masks_are_uniform(column):
    # Chi-square over 256 bins of 2**18 consecutive positions: the 99.9999th percentile of
    # chi2(255) is about 396, so a correct hash fails this once in a million runs.
    bins = 256
    cells, masks = hash_positions(np.arange(2**18), seed=99, segment=bins, t=8)
    values = masks if column == 3 else cells[:, column] - column * bins
    counts = np.bincount(values, minlength=bins)
    expected = 2**18 / bins
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 396


def test_seeds_give_independent_hashes():
    a, ma = hash_positions(np.arange(10_000), seed=0, segment=1000, t=16)
    b, mb = hash_positions(np.arange(10_000), seed=1, segment=1000, t=16)
    # Same cell by chance has probability 1/1000 per column.
    assert (a == b).mean() < 0.005 and (ma == mb).mean() < 0.005


def test_docs_decoder_reproduces_the_codec():
    """docs/codecs/weightless.md 'Decoding' in plain Python, bytes unpacked bit by bit."""
    from weightcodec.codecs import weightless

    rng = np.random.default_rng(0)
    layer = np.where(rng.random((12, 9)) < 0.3, rng.choice(np.float32([-0.5, 0.25, 1.0]), (12, 9)), 0).astype(np.float32)
    e = weightless.encode(layer, t=5, seed=77, filter="bloomier")
    meta, table = e.meta, e.sections["table"]
    codebook = np.frombuffer(e.sections["codebook"], "<f4").tolist()
    t, m = meta["t"], meta["m"]
    bits = [(table[b // 8] >> (b % 8)) & 1 for b in range(m * t)]
    cells = [sum(bits[i * t + j] << j for j in range(t)) for i in range(m)]
    out = []
    for p in range(layer.size):
        c0, c1, c2, mask = ref_hash(p, meta["seed"], m // 3, t)
        v = mask ^ cells[c0] ^ cells[c1] ^ cells[c2]
        out.append(codebook[v] if v < meta["K"] else 0.0)
    assert out == weightless.decode(meta, e.sections, layer.shape).reshape(-1).tolist()
