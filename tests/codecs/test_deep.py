import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightcodec import container
from weightcodec.codecs import deep, get_codec
from weightcodec.codecs.huffman import huffman_decode, huffman_encode
from weightcodec.errors import CorruptFileError, EncodeError, FormatError


def clustered(shape, clusters, density, seed=0, peaked=False):
    """A pruned layer: ``density`` of the weights non-zero, taking ``clusters`` distinct values."""
    rng = np.random.default_rng(seed)
    centroids = np.unique(rng.normal(0, 0.1, clusters).astype(np.float32))
    centroids = centroids[centroids != 0]
    if peaked:  # like a trained layer: most weights near the few centroids closest to 0
        weights = np.exp(-np.abs(centroids) / 0.03)
        codes = rng.choice(len(centroids), size=shape, p=weights / weights.sum())
    else:
        codes = rng.integers(0, len(centroids), size=shape)
    return np.where(rng.random(shape) < density, centroids[codes], np.float32(0)).astype(np.float32)


def roundtrip(array, **params):
    encoded = deep.encode(array, **params)
    out = deep.decode(encoded.meta, encoded.sections, array.shape)
    assert out.dtype == np.float32 and out.shape == array.shape
    expected = np.where(array == 0, np.float32(0), array)  # -0.0 is a pruned weight: decodes as +0.0
    np.testing.assert_array_equal(out.view(np.uint32), expected.view(np.uint32))
    return encoded


@st.composite
def layers(draw):
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=4)))
    clusters = draw(st.sampled_from([1, 2, 3, 17, 64, 256]))
    density = draw(st.sampled_from([0.0, 0.01, 0.1, 0.5, 0.9, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    return clustered(shape, clusters, density, seed)


@settings(max_examples=120, deadline=None)
@given(layers(), st.sampled_from(["auto", 1, 2, 3, 5, 8, 12, 16]))
def test_roundtrip_is_bit_exact(array, index_bits):
    encoded = roundtrip(array, index_bits=index_bits)
    assert set(encoded.sections) == {"codebook", "gaps", "codes"}
    assert list(encoded.meta) == ["index_bits", "entropy", "entries"]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_roundtrip_of_arbitrary_float32_bit_patterns(seed):
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**32, 40, dtype=np.uint64).astype(np.uint32)
    centroids = bits.view(np.float32)
    centroids = centroids[np.isfinite(centroids)]  # subnormals and huge values included
    array = rng.choice(np.append(centroids, [0, 0, -0.0]).astype(np.float32), size=(7, 13))
    roundtrip(array)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((1, 1), np.float32),
        np.full((1, 1), 0.5, np.float32),
        np.zeros((3, 5), np.float32),
        np.zeros((0, 4), np.float32),
        np.array(2.5, dtype=np.float32),
        clustered((5, 3, 3, 3), 256, 1.0),
        clustered((7, 1, 5, 5), 5, 0.3),
        clustered((300, 100), 1, 0.05),
        clustered((1000, 100), 4, 0.0005),
    ],
    ids=["1x1-zero", "1x1", "all-zero", "empty", "scalar", "conv-K256-dense", "conv-odd", "one-cluster", "very-sparse"],
)
def test_edge_cases(array):
    roundtrip(array)
    roundtrip(array, index_bits=1)


def test_all_zero_layer_is_empty_sections():
    encoded = deep.encode(np.zeros((4, 4), np.float32))
    assert dict(encoded.sections) == {"codebook": b"", "gaps": b"", "codes": b""}
    assert encoded.meta["entries"] == 0


def test_one_cluster_costs_no_code_bits():
    encoded = roundtrip(clustered((50, 50), 1, 0.3))
    assert len(encoded.sections["codes"]) == 2  # varint 0 + the one code: 0 bits per code


def test_single_nonzero_at_the_end_needs_fillers():
    array = np.zeros(1 << 12, np.float32)
    array[-1] = -3.0
    encoded = roundtrip(array, index_bits=1)
    info = deep.describe(encoded.meta, encoded.sections, array.shape)
    assert (info["nonzero"], info["fillers"], info["clusters"]) == (1, 2047, 1)  # (4096 - 1) // 2


@pytest.mark.parametrize("index_bits", range(1, 17))
def test_every_index_width(index_bits):
    array = clustered((40, 60), 32, 0.08, seed=index_bits)
    encoded = roundtrip(array, index_bits=index_bits)
    assert encoded.meta["index_bits"] == index_bits


def test_auto_keeps_the_smallest_width():
    array = clustered((120, 200), 32, 0.08, seed=5)
    sizes = {b: deep.encode(array, index_bits=b).nbytes for b in deep.AUTO_INDEX_BITS}
    best = min(sizes, key=lambda b: (sizes[b], b))
    encoded = deep.encode(array)
    assert encoded.meta["index_bits"] == best and encoded.nbytes == sizes[best]


def test_deterministic():
    array = clustered((64, 64), 40, 0.2, seed=9)
    first, second = deep.encode(array), deep.encode(array.copy())
    assert first.meta == second.meta and dict(first.sections) == dict(second.sections)


def test_codebook_section_is_sorted_little_endian_float32():
    array = np.array([[0, 2.0, -1.0], [0.5, 0, 2.0]], dtype=np.float32)
    encoded = deep.encode(array, index_bits=5)
    assert encoded.sections["codebook"] == np.array([-1.0, 0.5, 2.0], "<f4").tobytes()
    assert encoded.meta == {"index_bits": 5, "entropy": "huffman", "entries": 4}


def test_registered_and_through_the_container():
    assert get_codec("deep") is deep
    array = clustered((30, 20), 8, 0.2)
    record = container.TensorRecord("fc.weight", "float32", array.shape, deep.encode(array))
    data = container.to_bytes([record])
    np.testing.assert_array_equal(container.from_bytes(data).decode("fc.weight"), array)
    data_start = len(data) - record.nbytes
    for i in range(data_start, len(data)):  # any damaged byte: an error, never a wrong array
        bad = bytearray(data)
        bad[i] ^= 0x10
        with pytest.raises(CorruptFileError):
            container.from_bytes(bytes(bad)).decode("fc.weight")


# ----------------------------------------------------------------------------- size vs bound


def test_realistic_layer_within_10_percent_of_entropy_bound():
    array = clustered((300, 784), 64, 0.08, seed=1, peaked=True)
    encoded = roundtrip(array, index_bits=5)
    info = deep.describe(encoded.meta, encoded.sections, array.shape)
    assert info["bytes"] == encoded.nbytes
    assert info["bound_bytes"] <= info["bytes"] <= 1.10 * info["bound_bytes"]
    assert info["overhead_percent"] == pytest.approx(100 * (info["bytes"] / info["bound_bytes"] - 1))


def test_describe_figures():
    array = np.zeros(20, np.float32)
    array[[0, 1, 19]] = [0.5, -0.5, 0.5]  # gaps 1, 1, 18: one filler at b = 3
    encoded = deep.encode(array, index_bits=3)
    info = deep.describe(encoded.meta, encoded.sections, array.shape)
    sizes = {name: len(data) for name, data in encoded.sections.items()}
    assert info["section_bytes"] == sizes and info["bytes"] == sum(sizes.values())
    assert (info["nonzero"], info["fillers"], info["entries"], info["clusters"]) == (3, 2, 5, 2)
    assert (info["index_bits"], info["entropy"], info["value_bits_fixed"]) == (3, "huffman", 2)
    assert info["bits_per_code"] == 8 * sizes["codes"] / 5
    assert info["bits_per_gap"] == 8 * sizes["gaps"] / 5
    assert info["bits_per_nonzero"] == 8 * sum(sizes.values()) / 3
    # fillers land on 9 and 17, then 19; codebook [-0.5, 0.5], filler code 2
    assert huffman_decode(encoded.sections["gaps"], 5).tolist() == [0, 0, 7, 7, 1]
    assert huffman_decode(encoded.sections["codes"], 5).tolist() == [1, 0, 2, 2, 1]
    h = sum(-c * math.log2(c / 5) for c in (2, 2, 1)) + sum(-c * math.log2(c / 5) for c in (2, 1, 2))
    assert info["bound_bytes"] == pytest.approx(h / 8 + 8)


def test_describe_all_zero():
    encoded = deep.encode(np.zeros((3, 3), np.float32))
    info = deep.describe(encoded.meta, encoded.sections, (3, 3))
    assert (info["nonzero"], info["clusters"], info["value_bits_fixed"], info["bytes"]) == (0, 0, 0, 0)
    assert info["bound_bytes"] == 0 and info["overhead_percent"] == 0.0


def test_decode_400k_weight_layer():  # its speed is measured in benchmarks/, not here
    array = clustered((500, 800), 64, 0.08, seed=2, peaked=True)
    encoded = deep.encode(array, index_bits=5)
    np.testing.assert_array_equal(deep.decode(encoded.meta, encoded.sections, array.shape), array)


# ----------------------------------------------------------------------------- encode errors


def test_too_many_distinct_values():
    array = np.arange(1, 258, dtype=np.float32)
    with pytest.raises(EncodeError) as info:
        deep.encode(array)
    assert str(info.value) == (
        "array has 257 distinct non-zero values; the deep codec stores at most 256: "
        "cluster the weights first (k-means with k <= 256)"
    )


def test_nan_and_inf():
    array = np.array([0, 1, np.nan, np.inf, -np.inf, np.nan], dtype=np.float32)
    with pytest.raises(EncodeError) as info:
        deep.encode(array)
    assert str(info.value) == (
        "deep codec needs finite values; array holds 2 NaN and 2 infinite values (first at flat index 2)"
    )


def test_non_float32_input():
    with pytest.raises(EncodeError, match=r"encodes float32 arrays, got float64; convert with \.astype"):
        deep.encode(np.zeros(3))


@pytest.mark.parametrize("bits", [0, 17, True, "5", None])
def test_bad_index_bits(bits):
    with pytest.raises(EncodeError, match=r"index_bits must be 'auto' or an int in 1\.\.16"):
        deep.encode(np.ones(3, np.float32), index_bits=bits)


def test_unknown_entropy_coder_lists_the_known_ones():
    with pytest.raises(EncodeError, match=r"unknown entropy coder 'zip'; this weightcodec knows \['ans', 'huffman'\]"):
        deep.encode(np.ones(3, np.float32), entropy="zip")


# ----------------------------------------------------------------------------- hostile input


def sample():
    array = np.zeros((16, 20), np.float32)
    array.flat[[3, 4, 50, 51, 200, 319]] = [0.5, -0.25, 0.5, 0.125, -0.25, 0.5]
    return array, deep.encode(array, index_bits=4)


def decode_with(meta=None, sections=None, shape=None):
    array, encoded = sample()
    return deep.decode(
        {**encoded.meta, **(meta or {})},
        {**encoded.sections, **(sections or {})},
        array.shape if shape is None else shape,
    )


@pytest.mark.parametrize("name", ["codebook", "gaps", "codes"])
def test_every_truncation_and_extension_is_detected(name):
    _, encoded = sample()
    data = encoded.sections[name]
    for bad in [data[:n] for n in range(len(data))] + [data + b"\0", data + b"\x80"]:
        with pytest.raises(CorruptFileError):
            decode_with(sections={name: bad})


@pytest.mark.parametrize("name", ["codebook", "gaps", "codes"])
def test_random_corruption_raises_only_corrupt_file_error(name):
    array, encoded = sample()
    rng = np.random.default_rng(7)
    data = encoded.sections[name]
    for _ in range(300):
        bad = bytearray(data)
        for i in rng.integers(0, len(bad), rng.integers(1, 3)):
            bad[i] ^= int(rng.integers(1, 256))
        try:
            out = decode_with(sections={name: bytes(bad)})
        except CorruptFileError:
            continue
        # The codec cannot tell every flipped payload bit from valid data (the container's
        # CRC-32 does, see test_registered_and_through_the_container); what it returns is
        # still a well-formed tensor.
        assert out.shape == array.shape and out.dtype == np.float32


@pytest.mark.parametrize(
    "meta, match",
    [
        ({"entries": 25}, None),  # sample() has 6 non-zeros and 18 fillers
        ({"entries": 23}, None),
        ({"entries": -1}, r"'entries' is -1; expected an int in 0\.\.320"),
        ({"entries": 321}, r"'entries' is 321"),
        ({"entries": "6"}, "entries"),
        ({"index_bits": 0}, r"'index_bits' is 0; expected an int in 1\.\.16"),
        ({"index_bits": 17}, "index_bits"),
        ({"index_bits": True}, "index_bits"),
        ({"index_bits": 2}, r"gaps outside 0\.\.3"),
        ({"entropy": None}, "'entropy' must be a string"),
    ],
)
def test_bad_meta(meta, match):
    with pytest.raises(CorruptFileError, match=match):
        decode_with(meta=meta)


def test_unknown_entropy_coder_in_file_is_a_format_error():
    with pytest.raises(FormatError, match=r"unknown entropy coder 'tans'; this weightcodec knows \['ans', 'huffman'\]"):
        decode_with(meta={"entropy": "tans"})


def test_missing_or_extra_sections():
    array, encoded = sample()
    sections = dict(encoded.sections)
    del sections["gaps"]
    with pytest.raises(CorruptFileError, match=r"sections \['codebook', 'codes'\]; expected"):
        deep.decode(encoded.meta, sections, array.shape)
    with pytest.raises(CorruptFileError, match="expected"):
        deep.decode(encoded.meta, {**encoded.sections, "extra": b""}, array.shape)


def test_shape_too_small_for_the_gaps():
    with pytest.raises(CorruptFileError, match="reach flat position 319; the tensor has 319 elements"):
        decode_with(shape=(11, 29))


@pytest.mark.parametrize(
    "centroids",
    [[0.5, -0.25, 0.125], [-0.25, 0.125, 0.125], [-0.25, 0.0, 0.5], [-0.25, 0.125, np.nan], [-np.inf, 0.125, 0.5]],
    ids=["unsorted", "duplicate", "zero", "nan", "inf"],
)
def test_bad_codebook(centroids):
    with pytest.raises(CorruptFileError, match="finite, non-zero, strictly ascending"):
        decode_with(sections={"codebook": np.array(centroids, "<f4").tobytes()})


def test_unused_centroid_and_oversized_codebook():
    encoded = deep.encode(np.array([0.5, 0, -1, 0.5], np.float32))
    with pytest.raises(CorruptFileError, match="2 codes; meta says|holds 3 centroids, not all of them used"):
        codebook = np.array([-1, 0.5, 2], "<f4").tobytes()
        deep.decode(encoded.meta, {**encoded.sections, "codebook": codebook}, (4,))
    with pytest.raises(CorruptFileError, match="at most 1024"):
        decode_with(sections={"codebook": np.arange(1, 258, dtype="<f4").tobytes()})


def test_streams_must_be_canonical():
    _, encoded = sample()
    entries = encoded.meta["entries"]
    codes = huffman_decode(encoded.sections["codes"], entries)
    gaps = huffman_decode(encoded.sections["gaps"], entries)
    ending_filler = np.append(codes[:-1], 3)
    with pytest.raises(CorruptFileError, match="may not end the stream"):
        decode_with(sections={"codes": huffman_encode(ending_filler)})
    short_filler = gaps.copy()
    short_filler[codes == 3] = 14
    with pytest.raises(CorruptFileError, match="must store gap 15"):
        decode_with(sections={"gaps": huffman_encode(short_filler)})
    with pytest.raises(CorruptFileError, match=r"codes outside 0\.\.3"):
        decode_with(sections={"codes": huffman_encode(np.append(codes[:-1], 4))})
