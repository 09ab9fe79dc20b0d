import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightcodec.codecs.ans import SYMBOL_LIMIT, ans_decode, ans_encode, ans_header_bytes, quantize_counts
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
    assert hashlib.sha256(data).hexdigest() == GOLDEN


GOLDEN = "3de93e25a9c738cce6131b2b17274457f37ac5b0a7527b93a91addd7ef6e462b"


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
