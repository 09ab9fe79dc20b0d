"""rANS entropy coding of a stream of small non-negative ints, with a static per-stream model.

An alternative to :mod:`weightcodec.codecs.huffman` for the deep codec's streams (cluster
codes and sparse-index gaps), with the same interface: ``ans_encode(symbols) -> bytes`` and
``ans_decode(data, count) -> ndarray``, the symbol count stored by the caller.

Why: Huffman spends a whole number of bits per symbol, so its redundancy is up to one bit per
symbol and is worst on skewed streams, the gap streams of very sparse layers, whose most
frequent symbol has probability well above 1/2. Asymmetric numeral systems (Duda 2009/2013)
code a symbol of probability ``p`` in ``-log2 p`` bits *on average*, fractional bits included,
so a stream costs its empirical entropy ``n * H`` plus

* the model mismatch ``n * KL(p_empirical || q)`` of the quantized model ``q`` (small: the
  encoder picks the quantization precision that minimises header + mismatch, below),
* at most 32 bits for flushing the coder state (one 32-bit word),
* the header: the alphabet and the quantized counts.

The coding itself is done by the ``constriction`` library (Bamler, "Understanding Entropy
Coding With Asymmetric Numeral Systems (ANS): a Statistician's Perspective", 2022): a range
variant of ANS (``constriction.stream.stack.AnsCoder``, 32-bit words, 24-bit probabilities)
with a ``Categorical(perfect=False)`` model built from the stored counts. Encoder and decoder
build the model from the same integers through the same float64 divisions, so they agree
bit for bit; the bytes are those of constriction 0.x and tests pin a golden stream.

::

    symbols   0 0 3 0 7 0 0 3          alphabet [0, 3, 7]  (only present symbols get mass)
    ranks     0 0 1 0 2 0 0 1          counts   [5, 2, 1]  -> quantized q = [5, 2, 1]
                                       model    q / sum(q)
    ANS  : encode ranks in reverse into a stack of 32-bit words; decoding pops them in order

Stream layout (the symbol count ``n`` is stored by the caller; varints are unsigned LEB128,
7 bits a byte, low group first; ``gamma(x)`` is the Elias gamma code of ``x >= 1``: ``L - 1``
zero bits, then the ``L`` bits of ``x``, most significant first, ``L`` its bit length)::

    n == 0:                  nothing, 0 bytes
    one distinct symbol:     varint 5, varint symbol                      (0 bits per symbol)
    otherwise:               varint 4*D + a            D distinct symbols, 2 <= D <= n
                             varint s_0                the smallest symbol
                             model bits, MSB first in each byte, zero-padded to a whole byte:
                               if a = 0: D-1 x gamma(s_i - s_(i-1))   the rest of the sorted
                               if a = 1: nothing (contiguous alphabet: s_i = s_0 + i)
                               D x gamma(q_i)                         quantized counts, q_i >= 1
                             payload: 4 * W bytes, the coder's W little-endian uint32 words
                                      (W >= 1; the last word is never zero)

Gamma codes make the model cheap where it matters: a gap stream's alphabet is long but nearly
contiguous (1 bit per symbol) and its tail counts are small (a few bits each).

A reader checks every count against the bytes left before allocating, decodes exactly ``n``
symbols and then requires the coder to be back in its initial state: a stream that was cut,
padded or altered fails there (or earlier) with :class:`~weightcodec.errors.CorruptFileError`.
The check is not a checksum (the container's CRC-32 is): most altered payloads are caught,
not all; and an ``n`` larger than encoded can decode without error when the extra symbols
would be the alphabet's first one (coding it into the empty coder costs no bits).
See ``docs/codecs/ans.md``.
"""

from __future__ import annotations

import math

import constriction
import numpy as np
from bitarray import bitarray
from bitarray.util import ba2int

from .varint import encode_varints, read_varint
from ..errors import CorruptFileError, EncodeError

__all__ = ["SYMBOL_LIMIT", "ans_encode", "ans_decode", "ans_header_bytes", "quantize_counts"]

# Symbols are in [0, SYMBOL_LIMIT); the coder works on ranks into the alphabet, so the limit
# only bounds the varints of the alphabet, not the model size.
SYMBOL_LIMIT = 1 << 32
# constriction's Categorical quantizes to 24-bit probabilities: a model finer than that gains
# nothing, and each quantized count must stay below it.
MODEL_PRECISION_BITS = 24
# Quantization precisions the encoder tries (sum of quantized counts ~ 2**P); the smallest
# ones keep the header of short streams tiny, the largest ones make the mismatch negligible.
MIN_PRECISION_BITS = 4
# A varint of a value below 2**35 takes at most 5 bytes; anything longer is corruption.
MAX_VARINT_BYTES = 5
WORD_BYTES = 4  # constriction's AnsCoder emits uint32 words
# How the alphabet is stored (low 2 bits of the first header varint).
_DELTAS, _CONTIGUOUS = 0, 1
# Longest gamma code a reader accepts: values below 2**33 (symbol deltas below 2**32, counts
# below 2**24); a longer run of zero bits is corruption.
MAX_GAMMA_BITS = 33


def ans_encode(symbols: np.ndarray) -> bytes:
    """Entropy-code ``symbols`` with rANS and a static model stored in front of the payload.

    Parameters
    ----------
    symbols : ndarray of int, shape (n,)
        Non-negative ints below :data:`SYMBOL_LIMIT` (any integer dtype).

    Returns
    -------
    bytes
        The stream (layout in the module docstring); ``b""`` for an empty stream.

    Raises
    ------
    EncodeError
        If ``symbols`` is not a 1-D integer array, or holds negative values or values
        >= :data:`SYMBOL_LIMIT` (the message names how many and the first offenders).

    Examples
    --------
    >>> data = ans_encode(np.array([0, 0, 3, 0, 7, 0, 0, 3]))
    >>> ans_decode(data, 8).tolist()
    [0, 0, 3, 0, 7, 0, 0, 3]
    >>> ans_encode(np.array([5, 5, 5]))  # one distinct symbol: 0 bits per symbol
    b'\\x05\\x05'
    """
    symbols = _check_symbols(symbols)
    if symbols.size == 0:
        return b""
    alphabet, ranks, counts = np.unique(symbols, return_inverse=True, return_counts=True)
    if alphabet.size == 1:
        return encode_varints([4 * 1 + _CONTIGUOUS, int(alphabet[0])])
    quantized = quantize_counts(counts)
    header = _header(alphabet, quantized)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(ranks.astype(np.int32), _model(quantized))
    words = coder.get_compressed().astype("<u4", copy=False)
    return header + words.tobytes()


def ans_decode(data: bytes, count: int) -> np.ndarray:
    """Decode ``count`` symbols from a stream written by :func:`ans_encode`.

    Parameters
    ----------
    data : bytes
        The stream, exactly (no trailing bytes).
    count : int
        Number of symbols, as stored by the caller; ``>= 0``.

    Returns
    -------
    ndarray of int64, shape (count,)

    Raises
    ------
    CorruptFileError
        If the header is malformed (truncated varints, an alphabet that is not increasing or
        exceeds ``count`` symbols, zero counts), the payload is not whole 32-bit words, or the
        coder is not exactly exhausted after ``count`` symbols.

    Examples
    --------
    >>> ans_decode(b"", 0).tolist()
    []
    >>> ans_decode(b"\\x05\\x05", 2).tolist()
    [5, 5]
    """
    count = int(count)
    if count < 0:
        raise CorruptFileError(f"ANS stream claims {count} symbols; expected a count >= 0")
    if count == 0:
        if data:
            raise CorruptFileError(f"ANS stream of 0 symbols holds {len(data)} bytes; expected none")
        return np.zeros(0, dtype=np.int64)
    distinct, mode, alphabet, quantized, offset = _read_header(data, count)
    if distinct == 1:
        if offset != len(data):
            raise CorruptFileError(
                f"ANS stream of one distinct symbol has {len(data) - offset} trailing bytes; expected none"
            )
        return np.full(count, alphabet[0], dtype=np.int64)
    payload = len(data) - offset
    if payload <= 0 or payload % WORD_BYTES:
        raise CorruptFileError(
            f"ANS payload is {payload} bytes; expected a positive multiple of {WORD_BYTES} (whole 32-bit words)"
        )
    words = np.frombuffer(data, dtype="<u4", offset=offset).astype(np.uint32)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        ranks = coder.decode(_model(quantized), count)
        exhausted = coder.is_empty()
    except (ValueError, RuntimeError) as exc:  # constriction rejects malformed words itself
        raise CorruptFileError(f"ANS payload is damaged: {exc}") from None
    if not exhausted:
        raise CorruptFileError(
            f"ANS payload holds more data than {count} symbols need (damaged stream or wrong count)"
        )
    return alphabet[ranks.astype(np.int64)]


def quantize_counts(counts: np.ndarray) -> np.ndarray:
    """The model stored in the header: counts rescaled to the precision that costs fewest bits.

    For each precision ``P`` (sum of the result about ``2**P``, from :data:`MIN_PRECISION_BITS`
    up to where the exact counts are cheaper), the cost is the header's gamma codes plus the
    cross-entropy ``sum_i c_i * log2(Q / q_i)`` of the stream under the quantized model; the
    cheapest wins (ties: the finer model). The exact counts are a candidate too, if below
    ``2**24``.

    Parameters
    ----------
    counts : ndarray of int, shape (D,)
        Positive symbol counts, ``D >= 2``.

    Returns
    -------
    ndarray of int64, shape (D,)
        Quantized counts, each in ``[1, 2**24)``, summing to below ``2**24 + D``.

    Examples
    --------
    >>> quantize_counts(np.array([6, 2])).tolist()
    [3, 1]
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    probabilities = counts / total
    candidates = []
    if counts.max() < 1 << MODEL_PRECISION_BITS:
        candidates.append(counts)
    top = min(MODEL_PRECISION_BITS - 1, max(MIN_PRECISION_BITS, math.ceil(math.log2(total)) + 1))
    for precision in range(MIN_PRECISION_BITS, top + 1):
        candidates.append(np.maximum(1, np.rint(probabilities * (1 << precision))).astype(np.int64))
    best, best_cost = candidates[0], math.inf
    for q in candidates:
        # reduce by the gcd so equivalent models cost the same header and compare fairly
        q = q // np.gcd.reduce(q)
        cost = _gamma_bits(q) + float(np.sum(counts * np.log2(q.sum() / q)))
        if cost < best_cost - 1e-9 or (abs(cost - best_cost) <= 1e-9 and q.sum() > best.sum()):
            best, best_cost = q, cost
    return best


def ans_header_bytes(data: bytes, count: int) -> int:
    """Bytes of a stream's header (alphabet and model), the rest being coder payload.

    For reports: on tiny streams the header dominates, so benchmarks show it separately.

    Examples
    --------
    >>> ans_header_bytes(ans_encode(np.array([0, 1, 1, 1])), 4)
    3
    """
    if count == 0 or not data:
        return 0
    return _read_header(data, count)[4]


# ---------------------------------------------------------------------------------------------
# helpers


def _model(quantized: np.ndarray):
    # float64 division of exact integers: identical on every IEEE-754 platform
    return constriction.stream.model.Categorical(quantized.astype(np.float64) / float(quantized.sum()), perfect=False)


def _check_symbols(symbols) -> np.ndarray:
    array = np.asarray(symbols)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iub"):
        raise EncodeError(
            f"ANS codes a 1-D array of non-negative ints; got dtype {array.dtype} and shape {array.shape}"
        )
    array = array.astype(np.int64, copy=False)
    bad = (array < 0) | (array >= SYMBOL_LIMIT)
    if bad.any():
        raise EncodeError(
            f"ANS symbols must lie in [0, {SYMBOL_LIMIT}); {int(bad.sum())} do not, "
            f"first ones: {array[bad][:5].tolist()}"
        )
    return array


def _header(alphabet: np.ndarray, quantized: np.ndarray) -> bytes:
    deltas = np.diff(alphabet)
    mode = _CONTIGUOUS if (deltas == 1).all() else _DELTAS
    coded = quantized if mode == _CONTIGUOUS else np.concatenate([deltas, quantized])
    return encode_varints([4 * alphabet.size + mode, int(alphabet[0])]) + _gamma_encode(coded)


def _gamma_bits(values: np.ndarray) -> int:
    """Bits of the Elias gamma codes of ``values`` (each >= 1)."""
    lengths = np.floor(np.log2(np.asarray(values, dtype=np.float64))).astype(np.int64) + 1
    return int(np.sum(2 * lengths - 1))


def _gamma_encode(values: np.ndarray) -> bytes:
    """Elias gamma codes of ``values`` (each >= 1), MSB first, zero-padded to a byte."""
    bits = bitarray("".join("0" * (int(v).bit_length() - 1) + format(int(v), "b") for v in values))
    return bits.tobytes()


def _read_gammas(data: bytes, offset: int, n: int) -> tuple[np.ndarray, int]:
    """``n`` gamma codes from byte ``offset``; returns them and the byte after the padding."""
    if n > 8 * (len(data) - offset):  # each code takes at least one bit: refuse before looping
        raise CorruptFileError(f"ANS model needs {n} more codes but only {len(data) - offset} bytes remain")
    bits = bitarray()
    bits.frombytes(data[offset:])
    values = np.empty(n, dtype=np.int64)
    pos = 0
    for i in range(n):
        try:
            one = bits.index(1, pos, min(len(bits), pos + MAX_GAMMA_BITS))
        except ValueError:
            raise CorruptFileError(f"ANS model is truncated or damaged at code {i} of {n}") from None
        length = one - pos + 1
        if one + length > len(bits):
            raise CorruptFileError(f"ANS model is truncated at code {i} of {n}")
        values[i] = ba2int(bits[one : one + length])
        pos = one + length
    if bits[pos : -(-pos // 8) * 8].any():
        raise CorruptFileError("ANS model has non-zero padding bits")
    return values, offset + -(-pos // 8)


def _read_header(data: bytes, count: int):
    """(distinct, mode, alphabet, quantized counts or None, payload offset), all checked."""
    word, offset = read_varint(data, 0, what="ANS header", max_bytes=MAX_VARINT_BYTES)
    distinct, mode = word >> 2, word & 3
    if not 1 <= distinct <= count or mode > _CONTIGUOUS or (distinct == 1 and mode != _CONTIGUOUS):
        raise CorruptFileError(
            f"ANS stream of {count} symbols claims {distinct} distinct symbols (alphabet mode {mode}); "
            f"expected 1 to {count} (mode 0 or 1, 1 for a single symbol)"
        )
    first, offset = read_varint(data, offset, what="ANS header", max_bytes=MAX_VARINT_BYTES)
    if distinct == 1:
        alphabet = np.array([first], dtype=np.int64)
        quantized = None
    else:
        coded, offset = _read_gammas(data, offset, distinct if mode == _CONTIGUOUS else 2 * distinct - 1)
        steps = np.ones(distinct - 1, dtype=np.int64) if mode == _CONTIGUOUS else coded[: distinct - 1]
        alphabet = first + np.r_[0, np.cumsum(steps)].astype(np.int64)
        quantized = coded[-distinct:]
        if (quantized >= 1 << MODEL_PRECISION_BITS).any():
            raise CorruptFileError(
                f"ANS model holds counts of 2**{MODEL_PRECISION_BITS} or more: {quantized[quantized >= 1 << MODEL_PRECISION_BITS][:5].tolist()}"
            )
    if alphabet[-1] >= SYMBOL_LIMIT:
        raise CorruptFileError(f"ANS alphabet reaches symbol {int(alphabet[-1])}; expected symbols below {SYMBOL_LIMIT}")
    return distinct, mode, alphabet, quantized, offset


