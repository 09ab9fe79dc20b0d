"""Canonical Huffman coding of a stream of small non-negative ints (Deep Compression, §4).

Deep Compression Huffman-codes both the cluster codes and the sparse-index gaps; both are
skewed, so a prefix code with lengths near ``-log2 p(symbol)`` saves 20-30 %. The stream
costs about ``n * H`` bits, ``H`` the empirical entropy (:func:`entropy_bits`), plus less
than one bit per symbol of Huffman redundancy, plus the code table.

A *canonical* code is fully determined by how many codes each length has and which symbols
get them, so the table is stored as those two lists (as in DEFLATE) instead of the codewords::

    symbol:  3    5    9    2    7          counts per length 1..4: [1, 1, 1, 2]
    code:    0    10   110  1110 1111       symbols in canonical order: [3, 5, 9, 2, 7]

Within each length, symbols are in ascending order. The bits are packed and decoded by the
C-backed ``bitarray`` library (``encode`` with a code dict, ``canonical_decode``), never bit
by bit in Python.

Stream layout, in byte order (the symbol count is not stored: the caller keeps it)::

    empty stream (count 0):    nothing, 0 bytes
    one distinct symbol:       varint 0, varint symbol                  (0 bits per symbol)
    otherwise:                 varint L, L varints count[1..L],
                               sum(count) varints symbol (canonical order),
                               payload: ceil(bits / 8) bytes, first bit = MSB, zero padded

Varints are unsigned LEB128 (7 bits per byte, low group first, high bit = more follows).
The code is complete (Kraft sum exactly 1) and at most :data:`MAX_CODE_BITS` long; longer
Huffman codes are avoided by halving the frequencies until the lengths fit (as bzip2 does).
See ``docs/codecs/deep.md``.
"""

from __future__ import annotations

import itertools

import numpy as np
from bitarray import bitarray, frozenbitarray
from bitarray.util import canonical_decode, canonical_huffman, int2ba

from .varint import encode_varints, read_varint
from ..errors import CorruptFileError, EncodeError

__all__ = [
    "MAX_CODE_BITS",
    "SYMBOL_LIMIT",
    "entropy_bits",
    "huffman_table",
    "huffman_encode",
    "huffman_decode",
    "huffman_reader",
    "HuffmanReader",
    "counts_entropy_bits",
]

# Longest codeword. bitarray's canonical_decode accepts at most 31; 24 keeps the
# counts list short and still fits any alphabet below SYMBOL_LIMIT (2^16 <= 2^24).
MAX_CODE_BITS = 24
# Symbols are in [0, SYMBOL_LIMIT): cluster codes (<= 256) and gap fields (<= 16 bits).
SYMBOL_LIMIT = 1 << 16
# A varint of a value below 2^21 takes at most 3 bytes; table values are below 2^17.
MAX_VARINT_BYTES = 3
_ENCODE_CHUNK = 1 << 20  # symbols turned into a Python list at once by huffman_encode
BITS_PER_BYTE = 8


def entropy_bits(symbols: np.ndarray) -> float:
    """Empirical (order-0) entropy of the whole stream, in bits: ``sum_s -c_s log2(c_s / n)``.

    This is the lower bound for any code that spends a fixed number of bits per symbol value.

    Parameters
    ----------
    symbols : ndarray of int, shape (n,)
        Non-negative ints.

    Returns
    -------
    float
        Total bits (not bits per symbol); 0.0 for an empty stream or a single distinct symbol.

    Examples
    --------
    >>> entropy_bits(np.array([0, 1, 2, 3]))
    8.0
    """
    return counts_entropy_bits(np.bincount(np.asarray(symbols, dtype=np.int64).ravel()))


def counts_entropy_bits(counts: np.ndarray) -> float:
    """:func:`entropy_bits` of a stream given by its histogram (``counts[s]`` = occurrences of ``s``).

    A stream decoded in chunks adds up its histogram instead of keeping its symbols.

    Examples
    --------
    >>> counts_entropy_bits(np.array([1, 1, 1, 1]))
    8.0
    """
    counts = np.asarray(counts)
    counts = counts[counts > 0].astype(np.float64)
    n = counts.sum()
    return float(-(counts * np.log2(counts / n)).sum()) if n else 0.0


def huffman_table(frequencies: dict[int, int], max_code_bits: int = MAX_CODE_BITS) -> tuple[list[int], list[int]]:
    """Canonical Huffman table of at most ``max_code_bits`` bits per code.

    Parameters
    ----------
    frequencies : dict of int to int
        Symbol -> occurrence count (> 0), at least two symbols.
    max_code_bits : int
        Longest allowed codeword; must be at least ``ceil(log2(len(frequencies)))``.

    Returns
    -------
    counts : list of int
        ``counts[l - 1]`` = number of codes of length ``l``, for ``l = 1 .. L``; ``counts[-1] > 0``.
    symbols : list of int
        The symbols in canonical order: by code length, then ascending.

    Examples
    --------
    >>> huffman_table({3: 10, 5: 10, 9: 1, 2: 1, 7: 1})
    ([1, 1, 1, 2], [3, 5, 9, 2, 7])
    """
    freq = dict(sorted(frequencies.items()))  # fixed insertion order: deterministic ties
    while True:
        code, _, _ = canonical_huffman(freq)
        if max(len(c) for c in code.values()) <= max_code_bits:
            break
        # Flatter frequencies give shorter longest codes; all-ones gives a balanced tree.
        freq = {s: max(1, f // 2) for s, f in freq.items()}
    ordered = sorted(code, key=lambda s: (len(code[s]), s))
    longest = len(code[ordered[-1]])
    counts = [0] * longest
    for s in ordered:
        counts[len(code[s]) - 1] += 1
    return counts, ordered


def huffman_encode(symbols: np.ndarray) -> bytes:
    """Huffman-code ``symbols`` into one self-contained stream: code table, then payload.

    The count is not stored: pass it to :func:`huffman_decode`.

    Parameters
    ----------
    symbols : ndarray of int, shape (n,)
        Values in ``[0, SYMBOL_LIMIT)``.

    Returns
    -------
    bytes
        The stream (layout in the module docstring); empty for ``n == 0``. Equal input gives
        equal bytes.

    Raises
    ------
    EncodeError
        If a symbol is negative or ``>= SYMBOL_LIMIT``, or ``symbols`` is not 1-D ints.

    Examples
    --------
    >>> data = huffman_encode(np.array([7, 7, 7, 1]))
    >>> huffman_decode(data, 4).tolist()
    [7, 7, 7, 1]
    >>> huffman_encode(np.array([5, 5, 5]))  # one symbol: table only, 0 bits per symbol
    b'\\x00\\x05'
    """
    symbols = _check_symbols(symbols)
    frequencies = np.bincount(symbols)
    present = np.flatnonzero(frequencies)
    if present.size == 0:
        return b""
    if present.size == 1:
        return encode_varints([0, int(present[0])])
    counts, ordered = huffman_table({int(s): int(frequencies[s]) for s in present})
    payload, codewords = bitarray(endian="big"), _codewords(counts, ordered)
    for start in range(0, symbols.size, _ENCODE_CHUNK):  # a Python list of a chunk at a time
        payload.encode(codewords, symbols[start : start + _ENCODE_CHUNK].tolist())
    return encode_varints([len(counts), *counts, *ordered]) + payload.tobytes()


def huffman_decode(data: bytes, count: int) -> np.ndarray:
    """Decode exactly ``count`` symbols from a :func:`huffman_encode` stream.

    Every structural property is checked: table values, a complete code, the payload length
    (no missing or extra bytes) and zero padding. To decode a long stream in pieces of bounded
    memory, use :func:`huffman_reader`.

    Parameters
    ----------
    data : bytes
        The stream.
    count : int
        Number of symbols it holds (stored by the caller).

    Returns
    -------
    ndarray of int64, shape (count,)

    Raises
    ------
    CorruptFileError
        If the stream is truncated, has trailing bytes, or its table is not a valid canonical
        Huffman table.

    Examples
    --------
    >>> huffman_decode(huffman_encode(np.array([0, 2, 2, 9])), 4).tolist()
    [0, 2, 2, 9]
    """
    reader = huffman_reader(data, count)
    symbols = reader.read(count)
    reader.close()
    return symbols


def huffman_reader(data: bytes, count: int) -> "HuffmanReader":
    """A reader of the ``count`` symbols of a :func:`huffman_encode` stream, a chunk at a time.

    The table is read and checked now; :meth:`HuffmanReader.read` decodes the next symbols and
    :meth:`HuffmanReader.close` checks that the stream ends exactly after the last one. Memory
    is the stream plus the chunk asked for, whatever ``count`` claims.

    Raises
    ------
    CorruptFileError
        If the table is invalid, or the stream cannot hold ``count`` symbols (empty data for a
        positive count, data for none).

    Examples
    --------
    >>> reader = huffman_reader(huffman_encode(np.array([1, 1, 0, 1, 1])), 5)
    >>> reader.read(2).tolist(), reader.read(3).tolist()
    ([1, 1], [0, 1, 1])
    >>> reader.close()
    """
    data = bytes(data)
    if count <= 0 or not data:
        if count == 0 and not data:
            return HuffmanReader(b"", [], [0], 0)
        raise CorruptFileError(f"Huffman stream of {len(data)} bytes cannot hold {count} symbols")
    longest, offset = read_varint(data, 0, what="Huffman table", max_bytes=MAX_VARINT_BYTES)
    if longest == 0:
        symbol, offset = read_varint(data, offset, what="Huffman table", max_bytes=MAX_VARINT_BYTES)
        _check_table([], [symbol])
        if offset != len(data):
            raise CorruptFileError(f"single-symbol Huffman stream has {len(data) - offset} trailing bytes")
        return HuffmanReader(b"", [], [symbol], count)
    if longest > MAX_CODE_BITS:
        raise CorruptFileError(f"Huffman table declares {longest}-bit codes; the limit is {MAX_CODE_BITS}")
    counts, offset = _readencode_varints(data, offset, longest)
    ordered, offset = _readencode_varints(data, offset, sum(counts))
    _check_table(counts, ordered)
    return HuffmanReader(data[offset:], counts, ordered, count)


class HuffmanReader:
    """Decodes a checked Huffman stream's payload in chunks (made by :func:`huffman_reader`).

    An empty ``counts`` is the zero-bit code of a single symbol, ``ordered[0]``.
    """

    def __init__(self, payload: bytes, counts: list[int], ordered: list[int], count: int):
        self.payload, self.counts, self.ordered, self.left = payload, counts, ordered, count
        self.used = 0  # payload bits consumed so far
        if counts:
            self.bits = bitarray(endian="big")
            self.bits.frombytes(payload)
            self.symbols = canonical_decode(self.bits, [0, *counts], ordered)
            self.code_length = np.zeros(max(ordered) + 1, dtype=np.int64)
            self.code_length[ordered] = np.repeat(np.arange(1, len(counts) + 1), counts)

    def read(self, n: int) -> np.ndarray:
        """The next ``n`` symbols (int64); at most as many as are left."""
        if n > self.left:
            raise ValueError(f"asked for {n} symbols, only {self.left} are left")
        self.left -= n
        if not self.counts:
            return np.full(n, self.ordered[0], dtype=np.int64)
        try:
            # islice stops after n symbols, so the padding bits are never decoded.
            symbols = np.fromiter(itertools.islice(self.symbols, n), dtype=np.int64, count=n)
        except ValueError:  # the bits ran out, possibly in the middle of a codeword
            raise CorruptFileError(
                f"Huffman payload of {len(self.payload)} bytes is too short for its symbols"
            ) from None
        self.used += int(self.code_length[symbols].sum())
        return symbols

    def close(self) -> None:
        """Check that every symbol was read and the payload ends right after them, zero padded."""
        if self.left:
            raise ValueError(f"{self.left} symbols were not read")
        if self.counts and (len(self.payload) != -(-self.used // BITS_PER_BYTE) or self.bits[self.used :].any()):
            raise CorruptFileError(
                f"Huffman payload is {len(self.payload)} bytes; its symbols need {self.used} bits, zero padded to a byte"
            )


def _check_symbols(symbols: np.ndarray) -> np.ndarray:
    symbols = np.asarray(symbols)
    if symbols.ndim != 1 or (symbols.size and symbols.dtype.kind not in "iu"):
        raise EncodeError(f"Huffman symbols must be a 1-D int array, got {symbols.dtype} of shape {symbols.shape}")
    if not np.can_cast(symbols.dtype, np.intp):  # np.bincount's rule; narrower ints are used as they are
        symbols = symbols.astype(np.int64)
    if symbols.size and (symbols.min() < 0 or symbols.max() >= SYMBOL_LIMIT):
        raise EncodeError(
            f"Huffman symbols must be in [0, {SYMBOL_LIMIT}), got range [{symbols.min()}, {symbols.max()}]"
        )
    return symbols


def _codewords(counts: list[int], ordered: list[int]) -> dict[int, frozenbitarray]:
    """Assign canonical codewords: consecutive values within a length, shifted left per length."""
    code, value, index = {}, 0, 0
    for length, n in enumerate(counts, start=1):
        for symbol in ordered[index : index + n]:
            code[symbol] = frozenbitarray(int2ba(value, length, endian="big"))
            value += 1
        index += n
        value <<= 1
    return code


def _check_table(counts: list[int], ordered: list[int]) -> None:
    """A stored table must be what :func:`huffman_table` writes: complete, canonical order."""
    if counts and counts[-1] == 0:
        raise CorruptFileError(f"Huffman table declares {len(counts)}-bit codes but has none that long")
    longest = len(counts)
    kraft = sum(n << (longest - length) for length, n in enumerate(counts, start=1))
    if counts and kraft != 1 << longest:
        raise CorruptFileError(f"Huffman table counts {counts} do not form a complete prefix code")
    if max(ordered) >= SYMBOL_LIMIT or len(set(ordered)) != len(ordered):
        raise CorruptFileError(f"Huffman table symbols must be distinct and below {SYMBOL_LIMIT}")
    bounds = np.cumsum([0, *counts])
    if any(ordered[a:b] != sorted(ordered[a:b]) for a, b in zip(bounds[:-1], bounds[1:])):
        raise CorruptFileError("Huffman table symbols are not in canonical (ascending) order")


def _readencode_varints(data: bytes, offset: int, n: int) -> tuple[list[int], int]:
    if n > len(data) - offset:  # each varint takes at least one byte: refuse before looping
        raise CorruptFileError(f"Huffman table is truncated: {n} entries, {len(data) - offset} bytes left")
    values = []
    for _ in range(n):
        value, offset = read_varint(data, offset, what="Huffman table", max_bytes=MAX_VARINT_BYTES)
        values.append(value)
    return values, offset
