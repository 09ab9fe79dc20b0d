import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightcodec.codecs.huffman import (
    MAX_CODE_BITS,
    SYMBOL_LIMIT,
    entropy_bits,
    huffman_decode,
    huffman_encode,
    huffman_reader,
    huffman_table,
)
from weightcodec.errors import CorruptFileError, EncodeError


def geometric_stream(n, p=0.2, seed=0):
    return np.random.default_rng(seed).geometric(p, n) - 1


def test_exact_bytes_pin_the_format():
    # freq {1: 1, 7: 3}: two 1-bit codes; canonical order 1 -> '0', 7 -> '1'.
    # table: L=1, count[1]=2, symbols 1, 7; payload '1110' padded -> 0xE0.
    assert huffman_encode(np.array([7, 7, 7, 1])) == bytes([1, 2, 1, 7, 0xE0])


def test_empty_stream():
    assert huffman_encode(np.zeros(0, dtype=np.int64)) == b""
    out = huffman_decode(b"", 0)
    assert out.shape == (0,) and out.dtype == np.int64


def test_single_symbol_is_zero_bits_per_symbol():
    data = huffman_encode(np.full(10_000, 300))
    assert data == bytes([0, 0xAC, 0x02])  # varint 0, varint 300
    np.testing.assert_array_equal(huffman_decode(data, 10_000), np.full(10_000, 300))


def test_varint_symbols_up_to_the_limit():
    symbols = np.array([0, SYMBOL_LIMIT - 1, 127, 128, 16383, 16384] * 3)
    np.testing.assert_array_equal(huffman_decode(huffman_encode(symbols), symbols.size), symbols)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 40), max_size=300), st.integers(0, SYMBOL_LIMIT - 41))
def test_roundtrip(symbols, shift):
    symbols = np.array(symbols, dtype=np.int64) + shift
    data = huffman_encode(symbols)
    assert data == huffman_encode(symbols.copy())
    np.testing.assert_array_equal(huffman_decode(data, symbols.size), symbols)


def varint_bytes(value):
    return max(1, -(-value.bit_length() // 7))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=500).filter(lambda s: len(set(s)) > 1))
def test_size_is_table_plus_huffman_optimal_payload(symbols):
    symbols = np.array(symbols)
    values, freq = np.unique(symbols, return_counts=True)
    counts, ordered = huffman_table(dict(zip(values.tolist(), freq.tolist())))
    length = dict(zip(ordered, np.repeat(np.arange(1, len(counts) + 1), counts).tolist()))
    payload_bits = sum(int(f) * length[v] for v, f in zip(values.tolist(), freq))
    h = entropy_bits(symbols)
    assert h - 1e-9 <= payload_bits < h + symbols.size  # Huffman: H <= L < H + 1 per symbol
    table_bytes = sum(varint_bytes(v) for v in [len(counts), *counts, *ordered])
    assert len(huffman_encode(symbols)) == table_bytes + -(-payload_bits // 8)


def test_entropy_bits():
    assert entropy_bits(np.array([], dtype=np.int64)) == 0.0
    assert entropy_bits(np.array([4, 4, 4])) == 0.0
    assert entropy_bits(np.array([0, 1, 2, 3])) == 8.0
    assert entropy_bits(np.array([0, 0, 0, 1])) == pytest.approx(4 * (0.75 * np.log2(4 / 3) + 0.25 * 2))


def test_close_to_entropy_on_skewed_stream():
    symbols = geometric_stream(100_000)
    bound = entropy_bits(symbols) / 8
    assert bound <= len(huffman_encode(symbols)) <= 1.03 * bound


def test_length_limit_on_fibonacci_frequencies():
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    freq = dict(enumerate(fib))
    for limit in (MAX_CODE_BITS, 8, 6):
        counts, ordered = huffman_table(freq, limit)
        assert len(counts) <= limit and counts[-1] > 0
        assert sum(n << (len(counts) - length) for length, n in enumerate(counts, 1)) == 1 << len(counts)
        assert sorted(ordered) == list(range(40))


def test_table_is_canonical_order():
    counts, ordered = huffman_table({3: 10, 5: 10, 9: 1, 2: 1, 7: 1})
    assert (counts, ordered) == ([1, 1, 1, 2], [3, 5, 9, 2, 7])


def test_decode_400k_symbols():  # a layer-sized stream; its speed is measured in benchmarks/, not here
    symbols = geometric_stream(400_000, p=0.1, seed=1)
    np.testing.assert_array_equal(huffman_decode(huffman_encode(symbols), symbols.size), symbols)


@pytest.mark.parametrize(
    "bad", [np.array([-1, 2]), np.array([SYMBOL_LIMIT]), np.array([0.5, 1.0]), np.zeros((2, 2), int)]
)
def test_encode_rejects_bad_symbols(bad):
    with pytest.raises(EncodeError, match="Huffman symbols must be"):
        huffman_encode(bad)


def sample():
    symbols = geometric_stream(300, seed=2)
    return symbols, huffman_encode(symbols)


def test_every_truncation_is_detected():
    symbols, data = sample()
    for n in range(len(data)):
        with pytest.raises(CorruptFileError):
            huffman_decode(data[:n], symbols.size)


def test_trailing_bytes_and_wrong_count_are_detected():
    symbols, data = sample()
    for bad_data, count in [(data + b"\0", symbols.size), (data, symbols.size + 1), (data, 0), (b"", 5)]:
        with pytest.raises(CorruptFileError):
            huffman_decode(bad_data, count)
    with pytest.raises(CorruptFileError, match="trailing"):
        huffman_decode(bytes([0, 5, 0]), 3)


@pytest.mark.parametrize(
    "data, match",
    [
        ([25, 1], "limit is 24"),  # code length over the limit
        ([2, 2, 0, 1, 2, 0], "has none that long"),  # longest length unused
        ([2, 1, 1, 1, 5, 0], "complete prefix code"),  # lengths 1 and 2 only: incomplete
        ([1, 3, 0, 1, 2, 0], "complete prefix code"),  # three 1-bit codes: oversubscribed
        ([1, 2, 4, 4, 0], "distinct"),  # duplicate symbol
        ([2, 1, 2, 2, 9, 8, 0], "ascending"),  # the two 2-bit symbols out of order
        ([0, 0x80, 0x80, 0x04], "distinct and below"),  # single symbol 2^16
        ([0, 0x80, 0x80, 0x80, 0x01], "longer than 3 bytes"),
        ([3, 1, 1], "truncated"),  # counts cut short
        ([1, 2, 0], "truncated"),  # symbols cut short
    ],
)
def test_bad_tables_are_rejected(data, match):
    with pytest.raises(CorruptFileError, match=match):
        huffman_decode(bytes(data), 4)


def test_nonzero_padding_is_rejected():
    data = bytearray(huffman_encode(np.array([7, 7, 7, 1])))  # payload 0xE0: 4 padding bits
    data[-1] |= 0x01
    with pytest.raises(CorruptFileError, match="zero padded"):
        huffman_decode(bytes(data), 4)


def test_random_corruption_raises_only_corrupt_file_error():
    symbols, data = sample()
    rng = np.random.default_rng(3)
    for _ in range(500):
        bad = bytearray(data)
        for i in rng.integers(0, len(bad), rng.integers(1, 4)):
            bad[i] ^= int(rng.integers(1, 256))
        try:
            out = huffman_decode(bytes(bad), symbols.size)
        except CorruptFileError:
            continue
        assert out.shape == symbols.shape and out.min() >= 0 and out.max() < SYMBOL_LIMIT


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=400), st.lists(st.integers(1, 50), min_size=1, max_size=20))
def test_reader_in_chunks_equals_one_decode(read_in_chunks, values, chunks):
    symbols = np.array(values, dtype=np.int64)
    reader = huffman_reader(huffman_encode(symbols), symbols.size)
    np.testing.assert_array_equal(read_in_chunks(reader, symbols.size, chunks), symbols)


def test_reader_close_refuses_trailing_payload():
    symbols = np.random.default_rng(1).integers(0, 9, 5000)
    reader = huffman_reader(huffman_encode(symbols), 4000)
    reader.read(4000)
    with pytest.raises(CorruptFileError, match="zero padded to a byte"):
        reader.close()
