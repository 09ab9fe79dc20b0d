import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightcodec import container
from weightcodec.codecs import Encoded, get_codec, weightless
from weightcodec.codecs.weightless import (
    AUTO_ORDER,
    DEFAULT_FILTER,
    FILTER_CHOICES,
    FILTERS,
    decode,
    decode_into,
    describe,
    encode,
    expected_false_positives,
    measured_false_positives,
    smallest_t,
)
from weightcodec.errors import CorruptFileError, EncodeError, FormatError


def clustered_layer(shape, density, clusters, rng):
    """A pruned layer whose non-zeros take ``clusters`` distinct non-zero values."""
    codebook = np.sort(rng.choice(np.array([-1, 1]), clusters) * rng.uniform(0.01, 1.0, clusters)).astype(np.float32)
    codebook = np.unique(codebook[codebook != 0])
    layer = np.zeros(shape, np.float32)
    mask = rng.random(shape) < density
    layer[mask] = codebook[rng.integers(0, codebook.size, int(mask.sum()))]
    return layer


@st.composite
def layers(draw):
    shape = draw(st.lists(st.integers(1, 48), min_size=1, max_size=3).map(tuple))
    clusters = draw(st.integers(1, 256))
    layer = clustered_layer(shape, draw(st.floats(0.0, 1.0)), clusters, np.random.default_rng(draw(st.integers(0, 2**32))))
    distinct = np.unique(layer[layer != 0]).size
    t = draw(st.integers(max(1, math.ceil(math.log2(max(distinct, 1)))), 16))
    return layer, t, draw(st.integers(0, 2**64 - 1))


@pytest.mark.parametrize("filter", FILTER_CHOICES)
@settings(max_examples=50, deadline=None)
@given(case=layers())
def test_round_trip_keeps_every_non_zero_and_only_adds_centroids(filter, case):
    layer, t, seed = case
    e = encode(layer, t=t, seed=seed, filter=filter)
    out = decode(e.meta, e.sections, layer.shape)
    assert out.dtype == np.float32 and out.shape == layer.shape
    nonzero = layer != 0
    np.testing.assert_array_equal(out[nonzero], layer[nonzero])
    codebook = np.frombuffer(e.sections["codebook"], "<f4")
    assert np.isin(out[~nonzero & (out != 0)], codebook).all()
    assert e.meta["n"] == int(nonzero.sum()) and e.meta["K"] == codebook.size
    assert e.meta["filter"] in FILTERS and e.meta["filter"] == filter or filter == "auto"
    if e.meta["filter"] != "ribbon":  # m cells of t bits (ribbon's m counts rows of a self-describing table)
        assert len(e.sections["table"]) == math.ceil(e.meta["m"] * t / 8)
    into = np.full(layer.size, np.nan, np.float32)  # decode_into writes every element, in place
    assert decode_into(e.meta, e.sections, layer.shape, into) is into
    np.testing.assert_array_equal(into.reshape(layer.shape), out)


@pytest.mark.parametrize("clusters, t", [(16, 8), (16, 12), (200, 8), (3, 16)])
def test_false_positive_rate_is_k_over_two_to_the_t(clusters, t):
    # 2**22 positions at 5 % density: ~4e6 zeros. The count of zeros decoding non-zero is
    # Binomial(zeros, K / 2**t); allow 5 standard deviations (a correct filter fails this
    # once in 3.5 million runs; a mask or cell off by one bit misses by far more).
    layer = clustered_layer((2048, 2048), 0.05, clusters, np.random.default_rng(clusters + t))
    e = encode(layer, t=t, seed=7)
    out = decode(e.meta, e.sections, layer.shape)
    zeros = int((layer == 0).sum())
    p = e.meta["K"] / 2**t
    measured = measured_false_positives(layer, out)
    assert abs(measured - zeros * p) <= 5 * math.sqrt(zeros * p * (1 - p)) + 1
    assert describe(e.meta, e.sections, layer.shape)["measured_false_positives"] == measured


def test_false_positives_pick_centroids_uniformly():
    layer = clustered_layer((2048, 1024), 0.05, 8, np.random.default_rng(0))
    e = encode(layer, t=6, seed=1)
    out = decode(e.meta, e.sections, layer.shape)
    spurious = out[(layer == 0) & (out != 0)]
    counts = np.unique(spurious, return_counts=True)[1]
    expected = spurious.size / 8
    # 99.9999th percentile of chi2(7) is about 35.3.
    assert counts.size == 8 and float(((counts - expected) ** 2 / expected).sum()) < 35.3


def test_same_input_and_seed_give_the_same_file_bytes():
    layer = clustered_layer((300, 784), 0.08, 32, np.random.default_rng(1))

    def file_bytes(seed):
        rec = container.TensorRecord("fc1.weight", "float32", layer.shape, encode(layer, t=8, seed=seed))
        return container.to_bytes([rec], {"producer": "test"})

    first = file_bytes(3)
    assert first == file_bytes(3)
    assert first != file_bytes(4)
    out = container.from_bytes(first).decode("fc1.weight")
    np.testing.assert_array_equal(out[layer != 0], layer[layer != 0])


def test_default_filter_is_auto_and_stores_the_filter_it_built():
    assert DEFAULT_FILTER == "auto" and FILTER_CHOICES == ("auto", "bloomier", "fuse", "ribbon")
    assert encode(np.ones(3, np.float32), t=2).meta["filter"] == "fuse"  # 3 keys: the fewest cells
    layer = clustered_layer((300, 784), 0.08, 32, np.random.default_rng(5))
    assert encode(layer, t=8).meta["filter"] == "ribbon"  # ~19,000 keys: ~1.01 t bits each


def _table_bytes(layer, t, seed, filter):
    return len(encode(layer, t=t, seed=seed, filter=filter).sections["table"])


@settings(max_examples=40, deadline=None)
@given(
    n=st.one_of(st.integers(0, 40), st.integers(40, 3000), st.integers(3000, 60_000)),
    clusters=st.integers(1, 64),
    extra_t=st.integers(0, 4),
    seed=st.integers(0, 2**64 - 1),
    rng_seed=st.integers(0, 2**32),
)
def test_auto_keeps_the_smallest_filter(n, clusters, extra_t, seed, rng_seed):
    rng = np.random.default_rng(rng_seed)
    size = max(n, 1) * int(rng.integers(2, 20))
    codebook = np.arange(1, clusters + 1, dtype=np.float32)
    layer = np.zeros(size, np.float32)
    layer[rng.choice(size, n, replace=False)] = codebook[rng.integers(0, clusters, n)]
    t = max(1, math.ceil(math.log2(np.unique(layer[layer != 0]).size or 1))) + extra_t
    auto = encode(layer, t=t, seed=seed)
    sizes = {name: _table_bytes(layer, t, seed, name) for name in AUTO_ORDER}
    # never larger than any filter; the first of ribbon, bloomier, fuse among the smallest
    assert len(auto.sections["table"]) == min(sizes.values())
    for name, size in sizes.items():  # the floors that let "auto" skip a build are lower bounds
        assert FILTERS[name].floor is None or FILTERS[name].floor(n, t, 1.23) <= size
    assert auto.meta["filter"] == min(AUTO_ORDER, key=lambda name: (sizes[name], AUTO_ORDER.index(name)))
    assert auto == encode(layer, t=t, seed=seed, filter=auto.meta["filter"])  # the very same bytes and meta
    out = decode(auto.meta, auto.sections, layer.shape)
    np.testing.assert_array_equal(out[layer != 0], layer[layer != 0])  # every stored key exactly
    assert encode(layer, t=t, seed=seed) == auto  # deterministic


@pytest.mark.parametrize(
    "n, expected",
    [(2, "fuse"), (100, "bloomier"), (500, "bloomier"), (1500, "ribbon"), (20_000, "ribbon")],
)
def test_auto_picks_bloomier_or_fuse_on_small_layers_and_ribbon_on_large(n, expected):
    rng = np.random.default_rng(n)
    layer = np.zeros(n * 10, np.float32)
    layer[rng.choice(n * 10, n, replace=False)] = rng.integers(1, 9, n).astype(np.float32)
    auto = encode(layer, t=8, seed=1)
    assert auto.meta["filter"] == expected
    assert len(auto.sections["table"]) <= min(_table_bytes(layer, 8, 1, name) for name in FILTERS)


def test_auto_passes_over_a_filter_that_cannot_be_built():
    layer = clustered_layer((40, 50), 0.3, 4, np.random.default_rng(3))
    with pytest.raises(EncodeError, match="no seed of .* peels"):
        encode(layer, t=4, ratio=1.0, filter="bloomier")
    auto = encode(layer, t=4, ratio=1.0)  # the Bloomier filter cannot peel at this ratio; the others ignore it
    assert auto.meta["filter"] in ("ribbon", "fuse")
    np.testing.assert_array_equal(decode(auto.meta, auto.sections, layer.shape)[layer != 0], layer[layer != 0])


def test_auto_files_decode_with_the_stored_filter():
    # the file names the filter that was built: a reader needs nothing new for "auto"
    layer = clustered_layer((30, 40), 0.1, 8, np.random.default_rng(4))
    record = container.TensorRecord("w", "float32", layer.shape, encode(layer, t=6, seed=9))
    read = container.from_bytes(container.to_bytes([record], {}))
    assert read.record("w").encoded.meta["filter"] in FILTERS
    np.testing.assert_array_equal(read.decode("w")[layer != 0], layer[layer != 0])
    meta = dict(record.encoded.meta, filter="auto")
    with pytest.raises(FormatError, match=r"unknown filter 'auto'"):  # never a stored name
        decode(meta, record.encoded.sections, layer.shape)


def test_describe_reports_size_against_the_bound():
    layer = clustered_layer((300, 784), 0.08, 32, np.random.default_rng(2))
    e = encode(layer, t=8, filter="bloomier")
    d = describe(e.meta, e.sections, layer.shape)
    n = int((layer != 0).sum())
    assert d["n"] == n and d["t"] == 8 and d["clusters"] == 32 and d["filter"] == "bloomier"
    assert d["bound_bytes"] == n * 8 / 8 + 32 * 4
    assert d["bytes"] == e.nbytes == len(e.sections["table"]) + 128
    assert 8 * 1.23 < d["table_bits_per_nonzero"] < 8 * 1.25
    assert d["expected_false_positives"] == (layer.size - n) * 32 / 256
    assert 20 < d["overhead_percent"] < 26
    r = encode(layer, t=8)
    ribbon = describe(r.meta, r.sections, layer.shape)
    assert ribbon["filter"] == "ribbon" and ribbon["bound_bytes"] == d["bound_bytes"]
    assert 8 < ribbon["table_bits_per_nonzero"] < 8 * 1.05 and 0 < ribbon["overhead_percent"] < 5


@pytest.mark.parametrize("filter, table_bytes", [("bloomier", 0), ("fuse", 0), ("ribbon", 24)])
def test_all_zero_layer_is_an_empty_table(filter, table_bytes):
    e = encode(np.zeros((50, 40), np.float32), t=4, filter=filter)
    assert e.meta["n"] == 0 and e.meta["K"] == 0 and e.meta["m"] == 0
    assert e.sections["codebook"] == b"" and len(e.sections["table"]) == table_bytes  # ribbon: its header
    assert not decode(e.meta, e.sections, (50, 40)).any()
    d = describe(e.meta, e.sections, (50, 40))
    assert d["measured_false_positives"] == 0 and d["expected_false_positives"] == 0 and d["bits_per_nonzero"] == 0


@pytest.mark.parametrize("value", [0.0, -0.0, 0.25])
def test_one_by_one_layer(value):
    layer = np.array([[value]], np.float32)
    e = encode(layer, t=1)
    out = decode(e.meta, e.sections, (1, 1))
    if value:
        assert out.tolist() == [[0.25]]
    else:
        assert out.tolist() == [[0.0]] and e.meta["n"] == 0


def test_encode_errors_say_what_to_do():
    with pytest.raises(EncodeError, match=r"5 distinct non-zero values; t=2 holds at most 4 codes: use t >= 3"):
        encode(np.arange(6, dtype=np.float32), t=2)
    with pytest.raises(EncodeError, match=r"float32 arrays, got float64"):
        encode(np.zeros(3), t=4)
    with pytest.raises(EncodeError, match=r"1 NaN and 1 infinite values \(first at flat index 1\)"):
        encode(np.array([0, np.nan, np.inf], np.float32), t=4)
    with pytest.raises(EncodeError, match=r"t must be an int in 1\.\.16 \(bits per cell\), got 17"):
        encode(np.ones(3, np.float32), t=17)
    with pytest.raises(EncodeError, match=r"unknown filter 'xor'; this weightcodec knows \['auto', 'bloomier', 'fuse', 'ribbon'\]"):
        encode(np.ones(3, np.float32), t=4, filter="xor")
    with pytest.raises(EncodeError, match=r"seed=-1"):
        encode(np.ones(3, np.float32), t=4, seed=-1)


def good():
    """A Bloomier-filter tensor: the meta checks below are the weightless codec's and Bloomier's."""
    layer = clustered_layer((40, 50), 0.1, 5, np.random.default_rng(3))
    return encode(layer, t=7, seed=2, filter="bloomier"), layer.shape


@pytest.mark.parametrize(
    "change, error, message",
    [
        ({"t": 0}, CorruptFileError, r"meta 't' is 0; expected an int in 1\.\.16"),
        ({"t": 6}, CorruptFileError, r"table holds"),
        ({"t": True}, CorruptFileError, r"meta 't' is True"),
        ({"K": 200}, CorruptFileError, r"meta 'K' is 200"),
        ({"K": 4}, CorruptFileError, r"codebook is 20 bytes; K=4 needs 16"),
        ({"n": 10**6}, CorruptFileError, r"meta 'n' is 1000000; expected an int in 0\.\.2000"),
        ({"m": 10}, CorruptFileError, r"m=10 cells for n=\d+ keys"),
        ({"m": 3}, CorruptFileError, r"m=3 cells for n=\d+ keys"),
        ({"k": 4}, CorruptFileError, r"meta 'k' is 4; expected an int in 3\.\.3"),
        ({"seed": -1}, CorruptFileError, r"meta 'seed' is -1"),
        ({"seed": "0"}, CorruptFileError, r"meta 'seed' is '0'"),
        ({"filter": "ribbon9"}, FormatError, r"unknown filter 'ribbon9'"),
        ({"filter": None}, CorruptFileError, r"'filter' must be a string"),
    ],
)
def test_decode_rejects_bad_meta(change, error, message):
    e, shape = good()
    with pytest.raises(error, match=message):
        decode({**e.meta, **change}, e.sections, shape)


@pytest.mark.parametrize(
    "sections, message",
    [
        (lambda s: {**s, "table": s["table"][:-1]}, r"table holds \d+ bytes"),
        (lambda s: {**s, "table": s["table"] + b"\x00"}, r"table holds \d+ bytes"),
        (lambda s: {**s, "codebook": s["codebook"][:-4]}, r"codebook is 16 bytes"),
        (lambda s: {**s, "codebook": np.full(5, np.nan, "<f4").tobytes()}, r"finite, non-zero, strictly ascending"),
        (lambda s: {**s, "codebook": np.frombuffer(s["codebook"], "<f4")[::-1].tobytes()}, r"finite, non-zero, strictly ascending"),
        (lambda s: {"table": s["table"]}, r"sections \['table'\]; expected \['codebook', 'table'\]"),
        (lambda s: {**s, "extra": b""}, r"expected \['codebook', 'table'\]"),
    ],
)
def test_decode_rejects_bad_sections(sections, message):
    e, shape = good()
    with pytest.raises(CorruptFileError, match=message):
        decode(e.meta, sections(dict(e.sections)), shape)


def test_decode_rejects_nonzero_padding():
    layer = clustered_layer((10, 10), 0.3, 3, np.random.default_rng(4))
    e = encode(layer, t=3, filter="bloomier")
    assert e.meta["m"] * 3 % 8  # the last byte has padding bits
    table = bytearray(e.sections["table"])
    table[-1] |= 0x80
    with pytest.raises(CorruptFileError, match="padding"):
        decode(e.meta, {**e.sections, "table": bytes(table)}, layer.shape)


def test_decode_into_refuses_an_out_it_cannot_fill():
    e, shape = good()
    size = math.prod(shape)
    for out in (np.zeros(size, np.float64), np.zeros(size + 1, np.float32), np.zeros(2 * size, np.float32)[::2],
                np.zeros(size, np.float32).reshape(shape)):
        with pytest.raises(ValueError, match=f"out must be a writable C-contiguous float32 array of {size} elements"):
            decode_into(e.meta, e.sections, shape, out)


def test_registered_and_checked_through_the_container():
    assert get_codec("weightless") is weightless
    e, shape = good()
    bad = container.TensorRecord("w", "float32", shape, Encoded(e.codec, {**e.meta, "k": 5}, e.sections))
    with pytest.raises(CorruptFileError, match="meta 'k' is 5"):
        container.from_bytes(container.to_bytes([bad])).decode("w")


def test_choice_of_t():
    assert expected_false_positives(8, 8, 216_384) == 6762.0
    assert smallest_t(8, 7000, 216_384) == 8
    assert smallest_t(8, 6000, 216_384) == 9
    assert smallest_t(200, 1e9, 10) == 8  # 2**t must hold the codes
    assert smallest_t(0, 0, 10**6) == 1
    with pytest.raises(EncodeError, match=r"expect 15\.3 false positives even at t=16"):
        smallest_t(1, 0.5, 10**6)
    with pytest.raises(EncodeError, match="clusters >= 0"):
        smallest_t(-1, 1, 1)


def test_measured_false_positives_counts_new_non_zeros_only():
    assert measured_false_positives(np.array([0, 1, 0, 2.0]), np.array([3, 0, 0, 2.0])) == 1
    with pytest.raises(ValueError, match="must match"):
        measured_false_positives(np.zeros(2), np.zeros(3))
