import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightcodec.codecs import ans as ans_module
from weightcodec.codecs.ans import (
    SYMBOL_LIMIT,
    Bins,
    ans_decode,
    ans_encode,
    ans_header_bytes,
    choose_bins,
    quantize_counts,
)
from weightcodec.errors import CorruptFileError, EncodeError


def entropy_bits(symbols):
    _, counts = np.unique(symbols, return_counts=True)
    return float(-(counts * np.log2(counts / symbols.size)).sum())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, SYMBOL_LIMIT - 1), max_size=300))
def test_roundtrip_arbitrary_streams(values):
    symbols = np.array(values, dtype=np.int64)
    data = ans_encode(symbols)
    np.testing.assert_array_equal(ans_decode(data, symbols.size), symbols)
    assert ans_encode(symbols) == data  # deterministic


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 5000), st.integers(2, 300), st.floats(0.01, 0.99), st.integers(0, 2**32))
def test_roundtrip_skewed_streams(n, alphabet, p, seed):
    symbols = np.minimum(np.random.default_rng(seed).geometric(p, size=n) - 1, alphabet)
    np.testing.assert_array_equal(ans_decode(ans_encode(symbols), n), symbols)


def test_empty_and_single_symbol_streams():
    assert ans_encode(np.zeros(0, np.int64)) == b""
    assert ans_decode(b"", 0).shape == (0,)
    assert ans_encode(np.full(1000, 7)) == b"\x05\x07"  # header only: 0 bits per symbol
    np.testing.assert_array_equal(ans_decode(b"\x05\x07", 1000), np.full(1000, 7))
    np.testing.assert_array_equal(ans_decode(ans_encode(np.array([SYMBOL_LIMIT - 1])), 1), [SYMBOL_LIMIT - 1])


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.int64, np.uint64])
def test_integer_dtypes(dtype):
    symbols = np.array([0, 1, 1, 200, 3], dtype=dtype)
    np.testing.assert_array_equal(ans_decode(ans_encode(symbols), 5), symbols.astype(np.int64))


@pytest.mark.parametrize(
    "n,p,cap,bound", [(19_000, 0.3, 31, 1.01), (19_000, 0.08, 31, 1.01), (19_000, 0.05, 255, 1.02), (400_000, 0.1, 255, 1.002)]
)
def test_within_one_percent_of_entropy_header_included(n, p, cap, bound):
    # gap streams: geometric gaps capped by the index width (Deep Compression's fillers)
    rng = np.random.default_rng(int(p * 100))
    symbols = np.minimum(rng.geometric(p, size=n) - 1, cap)
    assert 8 * len(ans_encode(symbols)) <= bound * entropy_bits(symbols)


def test_cluster_code_stream_within_one_percent():
    rng = np.random.default_rng(0)
    weights = rng.laplace(size=32)
    codes = rng.choice(32, size=19_000, p=np.abs(weights) / np.abs(weights).sum())
    data = ans_encode(codes)
    assert 8 * len(data) <= 1.01 * entropy_bits(codes)
    assert ans_header_bytes(data, codes.size) < 50  # contiguous alphabet: s_0, then 32 gamma-coded counts


def test_quantized_model_keeps_every_symbol_and_prefers_small_headers():
    q = quantize_counts(np.array([1, 10**7]))
    assert q.min() >= 1 and q.max() < 2**24
    assert quantize_counts(np.array([6, 2])).tolist() == [3, 1]


def test_golden_stream_pins_constriction_output():
    # The payload is what constriction's AnsCoder writes; a library change that alters the bytes
    # would make old files unreadable, so it must fail here first.
    symbols = (np.arange(2000) * 7919 % 13) ** 2 % 11
    data = ans_encode(symbols)
    assert data[0] & 3 == 0  # the count layout (mode 0)
    assert hashlib.sha256(data).hexdigest() == GOLDEN


GOLDEN = "3de93e25a9c738cce6131b2b17274457f37ac5b0a7527b93a91addd7ef6e462b"


def test_golden_binned_stream_pins_constriction_output():
    # mode 2 also uses constriction's Uniform model for the offsets within a bin
    i = np.arange(5000)
    symbols = np.array([17 - (int(x) + 1).bit_length() for x in i * 2654435761 % 65521])  # geometric-like head
    tail = i * 7919 % 37 == 0
    symbols[tail] = i[tail] * 104729 % 2000  # a sparse tail of 137 symbols over 0..1999
    data = ans_encode(symbols)
    assert data[0] & 3 == 2
    assert hashlib.sha256(data).hexdigest() == GOLDEN_BINNED


GOLDEN_BINNED = "a2f5ba57c2ea88d19a1a28ae95e4690976c741bfe9676c9538a2498be4b91f23"


# --- streams written before the binned model existed (modes 0 and 1) must decode unchanged -----

# Written by ans_encode before mode 2 was added (commit 2544d29); symbols from integer formulas.
_I = np.arange(400)
OLD_STREAMS = [
    (
        7 + 3 * (((_I * _I * 31 + _I) % 61) // 4 % 13),  # alphabet 7, 10, ..., 43: mode 0
        "34076db6db6db2992bab54e40bed2121da63c9b8ddba793b49f696f1d5f488fa4f76b6cfd34b83b8aed181b1faa39715"
        "1f1bf7c6bd7d8bfe2a466a0d9119e63545d47b879adcd601662b723a7ff4d60e953833055688d5c1fa1dd157f09972e2"
        "412974dda31551cd7fd7178df267a89072335998d6b12b224d90c05cee7587e80c730481f18b05ef67a884c57e5a6803"
        "5e6482aadae3908164152d845611af9fa28c99d587586f84fb9b96b936542e151af242007510867c4c0000",
    ),
    (
        np.minimum((_I * 2654435761 % 1009) // 97, 7),  # alphabet 0..7: mode 1
        "2100492491c0bf0f4cd7dac21ab3f339e551d8d6976889907f419cb056ce033c07780321d66da0dc97ebce1b6f73949d"
        "3b7cc3fa26778670cd19557f898c20c174fb496a423518da0ce8d015dce26fe185ac3b0a4cd0039a3ac85c831346a535"
        "c304f7247e26d62a5eb3d784334077c814467fbab26f02ec79b5714e50adcef52d306488f73f92fff0f3a6e66dc0b012"
        "0ba29e840200",
    ),
]


@pytest.mark.parametrize("symbols,hex_stream", OLD_STREAMS)
def test_streams_written_before_the_binned_model_still_decode(symbols, hex_stream):
    data = bytes.fromhex(hex_stream)
    np.testing.assert_array_equal(ans_decode(data, symbols.size), symbols)
    assert ans_encode(symbols, model="counts") == data  # the count layout is written as it always was
    assert len(ans_encode(symbols)) <= len(data)  # and the default is never longer


def test_deep_tensor_written_before_the_binned_model_still_decodes():
    from weightcodec.codecs import deep

    k = np.arange(240)
    kept = k[(k * 37) % 11 < 3]
    expected = np.zeros((12, 20), np.float32)
    expected.flat[kept] = ((kept * 13) % 5 - 2.5).astype(np.float32)
    meta = {"index_bits": 3, "entropy": "ans", "entries": 66}
    sections = {
        "codebook": bytes.fromhex("000020c00000c0bf000000bf0000003f0000c03f"),
        "gaps": bytes.fromhex("0c004a2ca07407500a288f00e3a9b97d02"),
        "codes": bytes.fromhex("1500f86f49b3378cb3884022b54aa7340038e9fbaf1a22a3250000"),
    }
    np.testing.assert_array_equal(deep.decode(meta, sections, (12, 20)), expected)


# --- the binned model (mode 2) --------------------------------------------------------------------


def _sparse_tail_stream(n, seed, head=0.3, tail_span=2000, tail_fraction=0.05):
    """A gap-like stream: geometric head, plus a sparse tail of rare values up to ``tail_span``."""
    rng = np.random.default_rng(seed)
    symbols = rng.geometric(head, size=n) - 1
    tail = rng.random(n) < tail_fraction
    symbols[tail] = rng.integers(0, tail_span, size=int(tail.sum()))
    return symbols


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 6000), st.floats(0.02, 0.9), st.integers(1, 5000), st.floats(0, 0.3), st.integers(0, 2**32))
def test_binned_streams_roundtrip(n, head, tail_span, tail_fraction, seed):
    symbols = _sparse_tail_stream(n, seed, head, tail_span, tail_fraction)
    data = ans_encode(symbols)
    np.testing.assert_array_equal(ans_decode(data, n), symbols)
    assert ans_encode(symbols) == data  # deterministic
    assert len(data) <= len(ans_encode(symbols, model="counts"))  # never longer than the count layout
    binned = ans_encode(symbols, model="bins")
    np.testing.assert_array_equal(ans_decode(binned, n), symbols)
    assert len(data) <= len(binned)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, SYMBOL_LIMIT - 1), min_size=2, max_size=300), st.integers(0, 6))
def test_binned_layout_roundtrips_any_stream(values, mantissa):
    # forced mode 2 (whether or not the encoder would pick it), with the chosen bins and with
    # other mantissa parameters: the decoder must restore every stream bit for bit
    symbols = np.array(values, dtype=np.int64)
    alphabet, counts = np.unique(symbols, return_counts=True)
    if alphabet.size < 2:
        return
    bins = choose_bins(alphabet, counts)
    for candidate in (bins, _requantized(bins, mantissa)):
        data = ans_module._binned_layout(symbols, candidate)
        assert data[0] & 3 == 2
        np.testing.assert_array_equal(ans_decode(data, symbols.size), symbols)


def _requantized(bins, mantissa):
    """The same bins with masses rounded to what mantissa parameter ``mantissa`` represents."""
    masses = []
    for q in bins.masses.tolist():
        e = q.bit_length()
        m = min(e - 1, max(0, (e + mantissa) // 2 - 1))
        masses.append(q >> (e - 1 - m) << (e - 1 - m))
    return Bins(bins.starts, bins.widths, np.array(masses, dtype=np.int64), mantissa)


def test_binned_model_groups_a_sparse_tail():
    alphabet = np.r_[0, 1, 2, 3, np.arange(20, 400, 13)]
    counts = np.r_[900, 300, 100, 50, np.ones(30, int)]
    bins = choose_bins(alphabet, counts)
    assert bins.starts.tolist() == [0, 1, 2, 3, 20] and bins.widths.tolist() == [1, 1, 1, 1, 378]
    symbols = np.repeat(alphabet, counts)
    data = ans_encode(symbols)
    count_layout = ans_encode(symbols, model="counts")
    assert data[0] & 3 == 2 and data == ans_encode(symbols, model="bins") and len(data) < len(count_layout)
    assert ans_header_bytes(data, symbols.size) < ans_header_bytes(count_layout, symbols.size)


def test_gap_stream_with_a_sparse_tail_within_one_and_a_half_percent():
    # 20,000 gaps, a few hundred distinct values, ~200 of them singletons (like LeNet-5 fc1's);
    # the count model pays ~2.5 % here (benchmarks/results/entropy.md)
    symbols = _sparse_tail_stream(20_000, seed=7, head=0.06, tail_span=2000, tail_fraction=0.01)
    assert 8 * len(ans_encode(symbols)) <= 1.015 * entropy_bits(symbols)


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "symbols,match",
    [
        (np.array([1, -1, -5]), r"2 do not, first ones: \[-1, -5\]"),
        (np.array([SYMBOL_LIMIT]), "must lie in"),
        (np.zeros((2, 2), np.int64), r"1-D array of non-negative ints; got dtype int64 and shape \(2, 2\)"),
        (np.array([0.5]), "got dtype float64"),
    ],
)
def test_encode_errors(symbols, match):
    with pytest.raises(EncodeError, match=match):
        ans_encode(symbols)
    with pytest.raises(EncodeError, match=r"model must be one of \['auto', 'counts', 'bins'\], got 'gamma'"):
        ans_encode(np.array([1, 2]), model="gamma")


@pytest.fixture(scope="module")
def stream():
    symbols = np.minimum(np.random.default_rng(1).geometric(0.2, size=3000) - 1, 40)
    return symbols, ans_encode(symbols)


@pytest.mark.parametrize(
    "mutate,count_delta,match",
    [
        (lambda d: d[:-4], 0, "damaged|more data|multiple of 4"),
        (lambda d: d[:-1], 0, "multiple of 4"),
        (lambda d: d + b"\0\0\0\0", 0, "damaged|more data"),
        (lambda d: d[:1], 0, "truncated|needs"),
        (lambda d: b"\x03" + d[1:], 0, "distinct symbols"),
        (lambda d: b"\xff" * 6, 0, "longer than"),
        (lambda d: d, -1, "more data"),
    ],
)
def test_corrupt_streams_raise(stream, mutate, count_delta, match):
    symbols, data = stream
    with pytest.raises(CorruptFileError, match=match):
        ans_decode(mutate(data), symbols.size + count_delta)


@pytest.fixture(scope="module")
def binned_stream():
    symbols = _sparse_tail_stream(3000, seed=5)
    data = ans_encode(symbols)
    assert data[0] & 3 == 2
    return symbols, data


@pytest.mark.parametrize(
    "mutate,count_delta,match",
    [
        (lambda d: d[:-4], 0, "damaged|more data|multiple of 4"),
        (lambda d: d[:3], 0, "truncated|needs|remain"),
        (lambda d: d[:1], 0, "truncated"),
        (lambda d: d + b"\0\0\0\0", 0, "damaged|more data"),
        (lambda d: b"\x07" + d[1:], 0, "distinct symbols"),  # mode 3: not defined
        (lambda d: d, -1, "more data|damaged"),
    ],
)
def test_corrupt_binned_streams_raise(binned_stream, mutate, count_delta, match):
    symbols, data = binned_stream
    with pytest.raises(CorruptFileError, match=match):
        ans_decode(mutate(data), symbols.size + count_delta)


def _bits_to_bytes(bits):
    return int(bits.ljust(-(-len(bits) // 8) * 8, "0"), 2).to_bytes(-(-len(bits) // 8), "big")


@pytest.mark.parametrize(
    "model_bits,bins,match",
    [
        # r = 0; bin 0: width gamma(2**24) (too wide), step gamma(1)
        ("1" + "0" * 24 + "1" + "0" * 24 + "1", 1, "width 16777216"),
        # r = 0; bin 0: width 2, exponent step 25 (zigzag 50, gamma(51))
        ("1" + "010" + "00000110011", 1, "exponent 25"),
        # r = 0; bin 0: width 1, exponent 1: a single symbol
        ("1" + "1" + "011", 1, "single symbol"),
        # mantissa parameter 63
        ("000000" + "1000000", 1, "mantissa parameter 63"),
        # r = 0; bin 0 width 1, exponent 1; skip of 2**32 symbols; bin 1 width 1, exponent 1
        ("1" + "1" + "011" + "0" * 32 + "1" + "0" * 32 + "1" + "1", 2, "reaches symbol"),
        # r = 0; bin 0: width 1, exponent 1; then nothing: truncated
        ("1" + "1" + "011", 2, "truncated"),
    ],
)
def test_hostile_binned_models(model_bits, bins, match):
    data = bytes([4 * bins + 2, 0]) + _bits_to_bytes(model_bits) + b"\x01\x00\x00\x00"
    with pytest.raises(CorruptFileError, match=match):
        ans_decode(data, 10)


def test_binned_model_padding_and_bin_count_are_checked():
    with pytest.raises(CorruptFileError, match=r"claims 11 bins \(binned model\); expected 1 to 10"):
        ans_decode(bytes([4 * 11 + 2, 0, 0xFF]), 10)
    with pytest.raises(CorruptFileError, match="only 1 bytes remain"):
        ans_decode(bytes([4 * 10 + 2, 0, 0xFF]), 10)
    # r = 0; bin 0: width 2, exponent 1 (zigzag 2, gamma(3)); padding 1s
    with pytest.raises(CorruptFileError, match="non-zero padding"):
        ans_decode(bytes([4 * 1 + 2, 0]) + _bits_to_bytes("1" + "010" + "011" + "1") + b"\x01\x00\x00\x00", 10)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 40), st.integers(0, 300), st.binary(max_size=64), st.integers(1, 100))
def test_random_binned_models_never_crash(bins, first, rest, count):
    data = bytes([(4 * bins + 2) & 0x7F]) + bytes([first & 0x7F]) + rest
    try:
        out = ans_decode(data, count)
    except CorruptFileError:
        return
    assert out.shape == (count,)


def test_hostile_counts_and_trailing_bytes():
    with pytest.raises(CorruptFileError, match="expected a count >= 0"):
        ans_decode(b"", -1)
    with pytest.raises(CorruptFileError, match="0 symbols holds 2 bytes"):
        ans_decode(b"\x05\x07", 0)
    with pytest.raises(CorruptFileError, match="trailing bytes"):
        ans_decode(b"\x05\x07\x00", 5)
    with pytest.raises(CorruptFileError, match=r"claims 1000 distinct symbols \(alphabet mode 1\); expected 1 to 3"):
        ans_decode(b"\xa1\x1f", 3)
    # a model count of 2**24 (gamma code of 49 bits) and a run of zero bits longer than any code
    with pytest.raises(CorruptFileError, match="truncated or damaged at code 0"):
        ans_decode(b"\x09\x00" + b"\x00" * 8, 4)
    with pytest.raises(CorruptFileError, match="non-zero padding"):
        ans_decode(b"\x09\x00\xb1" + b"\x01\x00\x00\x00", 4)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 100))
def test_random_bytes_never_crash(data, count):
    try:
        out = ans_decode(data, count)
    except CorruptFileError:
        return
    assert out.shape == (count,)


def test_payload_bit_flips_are_detected_or_harmless(stream):
    # ANS has no checksum of its own (the container's CRC-32 covers sections); a flipped payload
    # bit must still never crash and is usually caught by the final-state check.
    symbols, data = stream
    header = ans_header_bytes(data, symbols.size)
    caught = 0
    for bit in range(8 * header, 8 * len(data), 37):
        damaged = bytearray(data)
        damaged[bit // 8] ^= 1 << (bit % 8)
        try:
            ans_decode(bytes(damaged), symbols.size)
        except CorruptFileError:
            caught += 1
    assert caught > 0


# --- through the deep codec ---------------------------------------------------------------------


@pytest.mark.parametrize("shape,density", [((300, 784), 0.08), ((1, 1), 1.0), ((7, 9), 0.0), ((20, 30), 0.3)])
def test_deep_codec_roundtrip_with_ans(shape, density, sparse_layer):
    from weightcodec.codecs import deep

    array, mask = sparse_layer(shape, density, clusters=32, seed=0)
    encoded = deep.encode(array, entropy="ans")
    assert encoded.meta["entropy"] == "ans"
    np.testing.assert_array_equal(deep.decode(encoded.meta, encoded.sections, shape), array)
    if mask.sum() > 1000:
        assert encoded.nbytes <= deep.encode(array, entropy="huffman").nbytes


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 2000), min_size=1, max_size=400),
    st.lists(st.integers(1, 50), min_size=1, max_size=20),
    st.sampled_from(["counts", "bins"]),
)
def test_reader_in_chunks_equals_one_decode(read_in_chunks, values, chunks, model):
    symbols = np.array(values, dtype=np.int64)
    reader = ans_module.ans_reader(ans_encode(symbols, model=model), symbols.size)
    np.testing.assert_array_equal(read_in_chunks(reader, symbols.size, chunks), symbols)


def test_reader_close_refuses_a_stream_longer_than_its_count():
    symbols = np.random.default_rng(1).integers(0, 9, 5000)
    for model in ("counts", "bins"):
        reader = ans_module.ans_reader(ans_encode(symbols, model=model), 4000)
        reader.read(2000)
        reader.read(2000)
        with pytest.raises(CorruptFileError, match="more data than its symbols need"):
            reader.close()
