"""The deep codec's codes split by row and column classes (codecs/contexts.py)."""

import functools
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightcodec import container
from weightcodec.codecs import contexts, deep
from weightcodec.codecs.huffman import counts_entropy_bits
from weightcodec.codecs.varint import encode_varints
from weightcodec.errors import CorruptFileError

from .test_deep import clustered, roundtrip


def spread_layer(shape=(96, 80), clusters=16, density=1.0, seed=0):
    """A clustered layer whose rows and columns have their own scale, as in a trained matrix."""
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.normal(0, 1.5, (shape[0], 1))) * np.exp(rng.normal(0, 1.0, (1, shape[1])))
    weights = rng.normal(size=shape) * scale
    centroids = np.quantile(weights, np.linspace(0.02, 0.98, clusters)).astype(np.float32)
    values = centroids[np.abs(weights[..., None] - centroids).argmin(-1)]
    return np.where(rng.random(shape) < density, values, 0).astype(np.float32)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(1, 12), min_size=1, max_size=3),
    st.sampled_from([1, 2, 17, 64]),
    st.sampled_from([0.0, 0.1, 0.9, 1.0]),
    st.sampled_from(["huffman", "ans"]),
    st.sampled_from(["auto", 1, 3]),
    st.integers(0, 2**32 - 1),
)
def test_roundtrip_is_bit_exact_and_never_larger(shape, clusters, density, entropy, index_bits, seed):
    array = clustered(tuple(shape), clusters, density, seed)
    plain = deep.encode(array, entropy=entropy, index_bits=index_bits)
    split = roundtrip(array, entropy=entropy, index_bits=index_bits, contexts=True)
    assert sum(map(len, split.sections.values())) <= sum(map(len, plain.sections.values()))
    assert split.meta == plain.meta
    if "classes" not in split.sections:
        assert split.sections == plain.sections


@pytest.mark.parametrize("entropy", ["huffman", "ans"])
@pytest.mark.parametrize("density, limit", [(1.0, 0.95), (0.3, 1.0)])
def test_classes_take_a_spread_layer_below_its_order0_bound(entropy, density, limit):
    array = spread_layer(density=density)
    encoded = roundtrip(array, entropy=entropy, contexts=True)
    assert list(encoded.sections) == ["codebook", "gaps", "classes", "codes"]
    figures = deep.describe(encoded.meta, encoded.sections, array.shape)
    assert figures["classes"][0] * figures["classes"][1] > 1
    _, codes = np.unique(array[array != 0], return_inverse=True)
    code_bound = counts_entropy_bits(np.bincount(codes)) / 8
    assert figures["section_bytes"]["codes"] + figures["section_bytes"]["classes"] < limit * code_bound  # one order-0 model cannot go below 1.0


def test_deterministic_and_through_the_container():
    array = spread_layer(seed=3)
    first, second = deep.encode(array, contexts=True), deep.encode(array, contexts=True)
    assert first.sections == second.sections
    data = container.to_bytes([container.TensorRecord("w", "float32", array.shape, first)], {})
    np.testing.assert_array_equal(container.from_bytes(data).decode("w"), array)


def test_quantile_classes_are_about_equally_full():
    classes = contexts.quantile_classes(np.arange(100.0), 4)
    assert np.bincount(classes).tolist() == [25, 25, 25, 25]
    assert contexts.quantile_classes(np.arange(5.0), 1).tolist() == [0] * 5


def test_contexts_of_positions():
    classes = contexts.Classes(2, 3, np.array([0, 1], np.uint8), np.array([2, 0, 1, 1], np.uint8))
    # view 2 x 4: position 5 is row 1, column 1 -> 1 * 3 + 0
    assert contexts.contexts_of(np.array([0, 3, 5, 7]), classes).tolist() == [2, 1, 3, 4]


# ----------------------------------------------------------------------------- hostile sections


@functools.cache
def sample():
    array = spread_layer((80, 60), clusters=8, seed=5)
    encoded = deep.encode(array, entropy="ans", contexts=True)
    assert "classes" in encoded.sections
    return array, encoded


def decode_with(**sections):
    array, encoded = sample()
    return deep.decode(encoded.meta, {**encoded.sections, **sections}, array.shape)


@pytest.mark.parametrize("name", ["classes", "codes"])
def test_every_truncation_and_extension_is_detected(name):
    _, encoded = sample()
    data = encoded.sections[name]
    for bad in [data[:n] for n in range(len(data))] + [data + b"\0", data + b"\x80"]:
        with pytest.raises(CorruptFileError):
            decode_with(**{name: bad})


@pytest.mark.parametrize("name", ["classes", "codes"])
def test_random_corruption_raises_only_corrupt_file_error(name):
    array, encoded = sample()
    rng = np.random.default_rng(11)
    for _ in range(200):
        bad = bytearray(encoded.sections[name])
        for i in rng.integers(0, len(bad), rng.integers(1, 3)):
            bad[i] ^= int(rng.integers(1, 256))
        try:
            out = decode_with(**{name: bytes(bad)})
        except CorruptFileError:
            continue
        assert out.shape == array.shape and out.dtype == np.float32


@pytest.mark.parametrize("header, match", [
    (bytes([0, 1]), "0 row and 1 column classes"),
    (bytes([41, 1]), "41 row and 1 column classes"),
    (bytes([1, 17]), "1 row and 17 column classes"),
])  # fmt: skip
def test_class_counts_out_of_range(header, match):
    _, encoded = sample()
    with pytest.raises(CorruptFileError, match=match):
        decode_with(classes=header + encoded.sections["classes"][2:])


def test_a_class_outside_its_range():
    array, encoded = sample()
    rows, cols = array.shape
    stream = deep.ENTROPY_CODERS["ans"].encode(np.full(rows, 3))  # 3 row classes claimed below, class 3 used
    section = bytes([3, 1]) + encode_varints([len(stream)]) + stream + encode_varints([0])
    with pytest.raises(CorruptFileError, match="class outside 0..2"):
        decode_with(classes=section)


def test_context_counts_must_add_up_and_cover_the_positions():
    array, encoded = sample()
    classes = contexts.read_classes(encoded.sections["classes"], *array.shape, deep.ENTROPY_CODERS["ans"].reader)
    n = classes.row_classes * classes.col_classes
    coder = deep.ENTROPY_CODERS["ans"].encode
    entries = encoded.meta["entries"]
    all_in_first = contexts.encode_by_context(np.zeros(entries, np.int64), np.zeros(entries, np.int64), n, coder)
    with pytest.raises(CorruptFileError, match="fewer entries than the positions need"):
        decode_with(codes=all_in_first)  # counts add up, but every entry sits in context 0
    one_short = contexts.encode_by_context(np.zeros(entries - 1, np.int64), np.zeros(entries - 1, np.int64), n, coder)
    with pytest.raises(CorruptFileError, match="do not add up"):
        decode_with(codes=one_short)
