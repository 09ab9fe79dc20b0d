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
* the header: the alphabet and the quantized counts, or (mode 2) a binned model.

The coding itself is done by the ``constriction`` library (Bamler, "Understanding Entropy
Coding With Asymmetric Numeral Systems (ANS): a Statistician's Perspective", 2022): a range
variant of ANS (``constriction.stream.stack.AnsCoder``, 32-bit words, 24-bit probabilities)
with a ``Categorical(perfect=False)`` model built from the stored counts or bin masses (and
``Uniform`` for a symbol's offset within its bin). Encoder and decoder
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
    otherwise, a count model (modes a = 0, 1; the original layout):
                             varint 4*D + a            D distinct symbols, 2 <= D <= n
                             varint s_0                the smallest symbol
                             model bits, MSB first in each byte, zero-padded to a whole byte:
                               if a = 0: D-1 x gamma(s_i - s_(i-1))   the rest of the sorted
                               if a = 1: nothing (contiguous alphabet: s_i = s_0 + i)
                               D x gamma(q_i)                         quantized counts, q_i >= 1
                             payload: 4 * W bytes, the coder's W little-endian uint32 words
                                      (W >= 1; the last word is never zero)
    or a binned model (mode 2, added later; streams in modes 0 and 1 read as they always did):
                             varint 4*B + 2            B bins, 1 <= B <= n
                             varint s_0                the first bin's first symbol
                             model bits: gamma(r + 1)  the mantissa parameter r
                               per bin j: gamma(W_j)                  width, 1 <= W_j < 2**24
                                          gamma(zigzag(e_j - e_(j-1)) + 1)   e_(-1) = 0
                                          m_j bits                    mass mantissa
                                          gamma(z_j + 1), not after the last bin: absent
                                                                      symbols up to the next bin
                             payload: as above; symbol v of bin j is coded as the bin
                                      (Categorical(M / sum(M))) and, if W_j > 1, v - start_j
                                      (Uniform(W_j))

Gamma codes make the count model cheap where a stream has few, frequent symbols (a contiguous
alphabet costs nothing, small counts a few bits each). The gap stream of a pruned layer has a
long, sparse tail instead: hundreds of gap values that occur once or twice each, which a count
model must list one by one. A binned model groups them: bin ``j`` covers ``W_j`` consecutive
symbols sharing a mass ``M_j`` (exponent ``e_j`` = its bit length, then its ``m_j = min(e_j - 1,
max(0, (e_j + r) // 2 - 1))`` bits after the leading 1, the rest 0: about half the bits, so
large masses keep the relative precision their larger counts need), spread uniformly over
the bin. The encoder picks the bins by a dynamic program that minimises header bits plus the
payload's ideal code length (:func:`choose_bins`) and writes whichever layout is shorter.

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
from typing import NamedTuple

import constriction
import numba
import numpy as np
from bitarray import bitarray
from bitarray.util import ba2int

from .varint import encode_varints, read_varint
from ..errors import CorruptFileError, EncodeError

__all__ = [
    "SYMBOL_LIMIT",
    "MODELS",
    "Bins",
    "ans_encode",
    "ans_decode",
    "ans_reader",
    "AnsReader",
    "ans_header_bytes",
    "choose_bins",
    "quantize_counts",
]

# How ans_encode may store the model (see its docstring).
MODELS = ("auto", "counts", "bins")
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
# How the model is stored (low 2 bits of the first header varint): the sorted alphabet as
# deltas or contiguous, each symbol with its own count (modes 0 and 1, the original layout), or
# a binned model (mode 2, added later; streams in modes 0 and 1 are read exactly as before).
_DELTAS, _CONTIGUOUS, _BINNED = 0, 1, 2
# Binned model: an offset within a bin is coded with constriction's Uniform(width), which takes
# widths below 2**24; a bin's mass has an exponent e (its bit length, 1..24) and a mantissa of
# m(e, r) bits.
MAX_BIN_WIDTH = (1 << MODEL_PRECISION_BITS) - 1
MAX_MASS_BITS = MODEL_PRECISION_BITS
# mantissa parameter r of the binned model: m(e, r) = min(e - 1, max(0, (e + r) // 2 - 1))
MAX_MANTISSA_PARAMETER = 2 * MODEL_PRECISION_BITS
# Encoder search (informative): bins group at most this many present symbols; the precision of
# the masses is tried around log2(n); streams of more distinct symbols keep the count model.
_MAX_GROUP = 64
_MANTISSA_PARAMETERS = (0, 2, 4)
_PRECISION_BELOW, _PRECISION_ABOVE = 2, 3
_MAX_BINNED_DISTINCT = 1 << 14
# bits the search assumes for a bin's exponent step (a zigzag gamma code: 1 bit for no change)
_EXPONENT_STEP_BITS = 3.0
# Longest gamma code a reader accepts: values below 2**33 (symbol deltas below 2**32, counts
# below 2**24); a longer run of zero bits is corruption.
MAX_GAMMA_BITS = 33
# Bin indices popped at a time from a binned stream (bounds the int32 buffer constriction returns).
_BIN_CHUNK = 1 << 16


def ans_encode(symbols: np.ndarray, *, model: str = "auto") -> bytes:
    """Entropy-code ``symbols`` with rANS and a static model stored in front of the payload.

    Parameters
    ----------
    symbols : ndarray of int, shape (n,)
        Non-negative ints below :data:`SYMBOL_LIMIT` (any integer dtype).
    model : {"auto", "counts", "bins"}, optional
        How the model is stored when there are two or more distinct symbols: ``"counts"``
        (every symbol with its quantized count, the original layout), ``"bins"`` (the binned
        model of :func:`choose_bins`), or ``"auto"`` (the default): whichever stream is shorter,
        the count model on a tie; a stream of more than 16,384 distinct symbols always uses
        counts. Any of them decodes with :func:`ans_decode`.

    Returns
    -------
    bytes
        The stream (layout in the module docstring); ``b""`` for an empty stream.

    Raises
    ------
    EncodeError
        If ``symbols`` is not a 1-D integer array, or holds negative values or values
        >= :data:`SYMBOL_LIMIT` (the message names how many and the first offenders), or
        ``model`` is not one of the three.

    Examples
    --------
    >>> data = ans_encode(np.array([0, 0, 3, 0, 7, 0, 0, 3]))
    >>> ans_decode(data, 8).tolist()
    [0, 0, 3, 0, 7, 0, 0, 3]
    >>> ans_encode(np.array([5, 5, 5]))  # one distinct symbol: 0 bits per symbol
    b'\\x05\\x05'
    """
    if model not in MODELS:
        raise EncodeError(f"ANS model must be one of {list(MODELS)}, got {model!r}")
    symbols = _check_symbols(symbols)
    if symbols.size == 0:
        return b""
    alphabet, ranks, counts = np.unique(symbols, return_inverse=True, return_counts=True)
    if alphabet.size == 1:
        return encode_varints([4 * 1 + _CONTIGUOUS, int(alphabet[0])])
    if model == "bins":
        return _binned_layout(symbols, choose_bins(alphabet, counts))
    best = _count_layout(alphabet, ranks.reshape(-1), quantize_counts(counts))
    if model == "auto" and alphabet.size <= _MAX_BINNED_DISTINCT:
        binned = _binned_layout(symbols, choose_bins(alphabet, counts))
        if len(binned) < len(best):  # ties keep the count layout
            best = binned
    return best


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
    reader = ans_reader(data, count)
    symbols = reader.read(int(count))
    reader.close()
    return symbols


def ans_reader(data: bytes, count: int) -> "AnsReader":
    """A reader of the ``count`` symbols of an :func:`ans_encode` stream, a chunk at a time.

    The header is read and checked now; :meth:`AnsReader.read` decodes the next symbols and
    :meth:`AnsReader.close` checks that the coder is exactly exhausted. Memory is the stream
    plus the chunk asked for, and for a binned model one bin index per symbol (1 or 2 bytes
    each for up to 2**16 bins: the coder pops every bin before the first offset).

    Raises
    ------
    CorruptFileError
        As :func:`ans_decode`, for what the header and payload length show.

    Examples
    --------
    >>> reader = ans_reader(ans_encode(np.array([0, 0, 3, 0, 7])), 5)
    >>> reader.read(3).tolist(), reader.read(2).tolist()
    ([0, 0, 3], [0, 7])
    >>> reader.close()
    """
    count = int(count)
    if count < 0:
        raise CorruptFileError(f"ANS stream claims {count} symbols; expected a count >= 0")
    if count == 0:
        if data:
            raise CorruptFileError(f"ANS stream of 0 symbols holds {len(data)} bytes; expected none")
        return AnsReader(None, _Header(np.zeros(1, dtype=np.int64), None, None, 0), 0)
    model = _read_header(data, count)
    offset = model.offset
    if model.bins is None and model.alphabet.size == 1:
        if offset != len(data):
            raise CorruptFileError(
                f"ANS stream of one distinct symbol has {len(data) - offset} trailing bytes; expected none"
            )
        return AnsReader(None, model, count)
    payload = len(data) - offset
    if payload <= 0 or payload % WORD_BYTES:
        raise CorruptFileError(
            f"ANS payload is {payload} bytes; expected a positive multiple of {WORD_BYTES} (whole 32-bit words)"
        )
    words = np.frombuffer(data, dtype="<u4", offset=offset).astype(np.uint32)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
    except (ValueError, RuntimeError) as exc:  # constriction rejects malformed words itself
        raise CorruptFileError(f"ANS payload is damaged: {exc}") from None
    return AnsReader(coder, model, count)


class AnsReader:
    """Decodes a checked ANS stream in chunks (made by :func:`ans_reader`).

    ``coder`` is None for a stream without payload (no symbols, or one distinct symbol).
    """

    def __init__(self, coder, model: _Header, count: int):
        self.coder, self.model, self.left = coder, model, count
        self.done = 0  # symbols returned so far
        self.index = None  # a binned model's bin of every symbol, popped on the first read
        if coder is not None and model.bins is None:
            self.categorical = _model(model.quantized)

    def read(self, n: int) -> np.ndarray:
        """The next ``n`` symbols (int64); at most as many as are left."""
        if n > self.left:
            raise ValueError(f"asked for {n} symbols, only {self.left} are left")
        self.left -= n
        if self.coder is None:
            return np.full(n, self.model.alphabet[0], dtype=np.int64)
        try:
            if self.model.bins is None:
                return self.model.alphabet[self.coder.decode(self.categorical, n).astype(np.int64)]
            return self._read_binned(n)
        except (ValueError, RuntimeError) as exc:  # constriction rejects malformed words itself
            raise CorruptFileError(f"ANS payload is damaged: {exc}") from None

    def close(self) -> None:
        """Check that every symbol was read and the coder is back in its initial state."""
        if self.left:
            raise ValueError(f"{self.left} symbols were not read")
        if self.coder is not None and not self.coder.is_empty():
            raise CorruptFileError(
                "ANS payload holds more data than its symbols need (damaged stream or wrong count)"
            )

    def _read_binned(self, n: int) -> np.ndarray:
        bins = self.model.bins
        if self.index is None:
            self.index = self._pop_bins(self.done + n + self.left)
        index = self.index[self.done : self.done + n].astype(np.int64)
        self.done += n
        sizes = bins.widths[index]
        offsets = np.zeros(n, dtype=np.int64)
        wide = sizes > 1
        if wide.any():
            offsets[wide] = self.coder.decode(constriction.stream.model.Uniform(), sizes[wide].astype(np.int32))
        return bins.starts[index] + offsets

    def _pop_bins(self, count: int) -> np.ndarray:
        """The bin of each of the ``count`` symbols, in the smallest dtype that holds them."""
        bins = self.model.bins
        dtype = np.min_scalar_type(bins.widths.size - 1)
        index = np.zeros(count, dtype=dtype)
        if bins.widths.size > 1:
            masses = _model(bins.masses)
            for start in range(0, count, _BIN_CHUNK):
                stop = min(count, start + _BIN_CHUNK)
                index[start:stop] = self.coder.decode(masses, stop - start)
        return index


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
    return _read_header(data, count).offset


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


def _words(coder) -> bytes:
    return coder.get_compressed().astype("<u4", copy=False).tobytes()


def _gamma_string(value: int) -> str:
    return "0" * (value.bit_length() - 1) + format(value, "b")


def _gamma_bits(values: np.ndarray) -> int:
    """Bits of the Elias gamma codes of ``values`` (each >= 1)."""
    lengths = np.floor(np.log2(np.asarray(values, dtype=np.float64))).astype(np.int64) + 1
    return int(np.sum(2 * lengths - 1))


def _gamma_encode(values: np.ndarray) -> bytes:
    """Elias gamma codes of ``values`` (each >= 1), MSB first, zero-padded to a byte."""
    return bitarray("".join(_gamma_string(int(v)) for v in values)).tobytes()


def _read_gammas(data: bytes, offset: int, n: int) -> tuple[np.ndarray, int]:
    """``n`` gamma codes from byte ``offset``; returns them and the byte after the padding."""
    if n > 8 * (len(data) - offset):  # each code takes at least one bit: refuse before looping
        raise CorruptFileError(f"ANS model needs {n} more codes but only {len(data) - offset} bytes remain")
    reader = _BitReader(data, offset)
    values = np.array([reader.gamma(f"code {i} of {n}") for i in range(n)], dtype=np.int64)
    return values, reader.end()


class _Header(NamedTuple):
    """A stream's checked model: an alphabet with quantized counts (modes 0, 1) or bins (mode 2)."""

    alphabet: np.ndarray | None  # int64 (D,), sorted; None for a binned model
    quantized: np.ndarray | None  # int64 (D,), None for one distinct symbol or a binned model
    bins: Bins | None
    offset: int  # first payload byte


def _read_header(data: bytes, count: int) -> _Header:
    """The stream's model, every field checked, and where the payload starts."""
    word, offset = read_varint(data, 0, what="ANS header", max_bytes=MAX_VARINT_BYTES)
    distinct, mode = word >> 2, word & 3
    if mode == _BINNED:
        if not 1 <= distinct <= count:
            raise CorruptFileError(
                f"ANS stream of {count} symbols claims {distinct} bins (binned model); expected 1 to {count}"
            )
        first, offset = read_varint(data, offset, what="ANS header", max_bytes=MAX_VARINT_BYTES)
        bins, offset = _read_bins(data, offset, distinct, first)
        return _Header(None, None, bins, offset)
    if not 1 <= distinct <= count or mode > _CONTIGUOUS or (distinct == 1 and mode != _CONTIGUOUS):
        raise CorruptFileError(
            f"ANS stream of {count} symbols claims {distinct} distinct symbols (alphabet mode {mode}); "
            f"expected 1 to {count} (mode 0, 1 or 2, 1 for a single symbol; a larger mode is from a newer writer)"
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
    return _Header(alphabet, quantized, None, offset)


# ---------------------------------------------------------------------------------------------
# the binned model (mode 2)


class Bins(NamedTuple):
    """A binned model: bin ``j`` holds symbols ``starts[j] .. starts[j] + widths[j] - 1``, each
    with probability ``masses[j] / sum(masses) / widths[j]``; symbols outside every bin have none.

    ``masses`` are representable with mantissa parameter ``mantissa``: a mass of bit length
    ``e`` keeps ``m = min(e - 1, max(0, (e + mantissa) // 2 - 1))`` bits after its leading 1,
    the rest are 0.
    """

    starts: np.ndarray  # int64 (B,), ascending, bins do not overlap
    widths: np.ndarray  # int64 (B,), 1 .. MAX_BIN_WIDTH
    masses: np.ndarray  # int64 (B,), 1 .. 2**24 - 1
    mantissa: int


def choose_bins(alphabet: np.ndarray, counts: np.ndarray) -> Bins:
    """The binned model that the encoder estimates cheapest (header plus payload) for a stream.

    Sorted distinct symbols are grouped into bins, either tight (the group's first to last
    symbol, then a skip to the next group) or stretched to the next group. A dynamic program
    over the groups minimises header bits plus ``sum_b c_b * (log2(Q / q_b) + log2(W_b))``
    (``c_b`` symbols of bin ``b``, mass ``q_b``, width ``W_b``, ``Q`` the total mass) for each
    mass precision (masses ~ ``c_b * 2**P / n``) and mantissa parameter; the cheapest wins
    (ties: the first tried). A few hundred distinct symbols with a long, sparse tail (the gap
    stream of a pruned layer) become a couple dozen bins: the rare tail symbols share a bin
    instead of each paying its own alphabet entry and count.

    Parameters
    ----------
    alphabet : ndarray of int, shape (D,)
        Distinct symbols, ascending, ``D >= 1``.
    counts : ndarray of int, shape (D,)
        Their positive counts.

    Returns
    -------
    Bins

    Examples
    --------
    Four frequent symbols and 30 singletons spread over 20..397: the singletons share a bin.

    >>> alphabet = np.r_[0, 1, 2, 3, np.arange(20, 400, 13)]
    >>> bins = choose_bins(alphabet, np.r_[900, 300, 100, 50, np.ones(30, int)])
    >>> bins.starts.tolist(), bins.widths.tolist(), bins.masses.tolist()
    ([0, 1, 2, 3, 20], [1, 1, 1, 1, 378], [1344, 448, 144, 80, 48])
    """
    alphabet = np.asarray(alphabet, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    prefix = np.r_[0, np.cumsum(counts)].astype(np.int64)
    top = max(1, math.ceil(math.log2(total)))
    best, best_cost = None, math.inf
    for precision in range(max(1, top - _PRECISION_BELOW), min(MAX_MASS_BITS - 1, top + _PRECISION_ABOVE) + 1):
        for mantissa in _MANTISSA_PARAMETERS:
            log_total = float(precision)
            for _ in range(2):  # the search assumes a total mass; the second pass uses the first's
                ends, widths, masses = _bin_search(alphabet, prefix, total, precision, log_total, mantissa, _MAX_GROUP)
                bins, bin_counts = _collect_bins(alphabet, prefix, ends, widths, masses, mantissa)
                cost = _binned_bits(bins, bin_counts)
                if cost < best_cost:
                    best, best_cost = bins, cost
                log_total = math.log2(int(bins.masses.sum()))
    return best


def _collect_bins(alphabet, prefix, ends, widths, masses, mantissa) -> tuple[Bins, np.ndarray]:
    starts, chosen = [], []
    i = 0
    while i < alphabet.size:
        starts.append(int(alphabet[i]))
        chosen.append(i)
        i = int(ends[i]) + 1
    chosen = np.array(chosen, dtype=np.int64)
    next_group = np.r_[chosen[1:], alphabet.size]
    bin_counts = prefix[next_group] - prefix[chosen]
    return Bins(np.array(starts, dtype=np.int64), widths[chosen].copy(), masses[chosen].copy(), mantissa), bin_counts


def _mantissa_bits_array(exponents: np.ndarray, mantissa: int) -> np.ndarray:
    return np.minimum(exponents - 1, np.maximum(0, (exponents + mantissa) // 2 - 1))


def _zigzag(values: np.ndarray) -> np.ndarray:
    return np.where(values >= 0, 2 * values, -2 * values - 1)


def _binned_fields(bins: Bins):
    """Exponents, mantissa widths, exponent steps (zigzag + 1) and skips (+ 1) of the header."""
    exponents = np.array([int(q).bit_length() for q in bins.masses], dtype=np.int64)
    mantissas = _mantissa_bits_array(exponents, bins.mantissa)
    steps = _zigzag(np.diff(np.r_[0, exponents])) + 1
    skips = bins.starts[1:] - (bins.starts[:-1] + bins.widths[:-1]) + 1
    return exponents, mantissas, steps, skips


def _binned_bits(bins: Bins, bin_counts: np.ndarray) -> float:
    """Estimated bits of a binned stream: header exactly, payload as its ideal code length."""
    _, mantissas, steps, skips = _binned_fields(bins)
    model = _gamma_bits([bins.mantissa + 1]) + _gamma_bits(bins.widths) + _gamma_bits(steps)
    model += int(mantissas.sum()) + _gamma_bits(skips)
    varints = len(encode_varints([4 * bins.widths.size + _BINNED, int(bins.starts[0])]))
    total = float(bins.masses.sum())
    payload = float(np.sum(bin_counts * (np.log2(total / bins.masses) + np.log2(bins.widths))))
    return 8 * varints + 8 * -(-model // 8) + payload


def _count_layout(alphabet: np.ndarray, ranks: np.ndarray, quantized: np.ndarray) -> bytes:
    """A stream of at least two distinct symbols with the count model (modes 0 and 1)."""
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(ranks.astype(np.int32), _model(quantized))
    return _header(alphabet, quantized) + _words(coder)


def _binned_layout(symbols: np.ndarray, bins: Bins) -> bytes:
    """A stream with the binned model (mode 2); every symbol must fall in a bin."""
    return _binned_header(bins) + _binned_payload(symbols, bins)


def _binned_header(bins: Bins) -> bytes:
    exponents, mantissas, steps, skips = _binned_fields(bins)
    fields = [_gamma_string(bins.mantissa + 1)]
    for j in range(bins.widths.size):
        fields.append(_gamma_string(int(bins.widths[j])))
        fields.append(_gamma_string(int(steps[j])))
        e, m, q = int(exponents[j]), int(mantissas[j]), int(bins.masses[j])
        assert q & ((1 << (e - 1 - m)) - 1) == 0, "mass not representable"
        if m:
            fields.append(format((q >> (e - 1 - m)) - (1 << m), f"0{m}b"))
        if j < skips.size:
            fields.append(_gamma_string(int(skips[j])))
    varints = encode_varints([4 * bins.widths.size + _BINNED, int(bins.starts[0])])
    return varints + bitarray("".join(fields)).tobytes()


def _binned_payload(symbols: np.ndarray, bins: Bins) -> bytes:
    index = np.searchsorted(bins.starts, symbols, side="right") - 1
    offsets = symbols - bins.starts[index]
    sizes = bins.widths[index]
    assert (index >= 0).all() and (offsets < sizes).all(), "symbol outside every bin"
    coder = constriction.stream.stack.AnsCoder()
    wide = sizes > 1
    if wide.any():  # pushed first: the decoder pops the bins, then the offsets within them
        uniform = constriction.stream.model.Uniform()
        coder.encode_reverse(offsets[wide].astype(np.int32), uniform, sizes[wide].astype(np.int32))
    if bins.widths.size > 1:
        coder.encode_reverse(index.astype(np.int32), _model(bins.masses))
    return _words(coder)


def _read_bins(data: bytes, offset: int, count: int, first: int) -> tuple[Bins, int]:
    """``count`` bins from byte ``offset`` (the first starting at symbol ``first``), checked."""
    if 2 * count > 8 * (len(data) - offset):  # every bin takes at least two bits: refuse before looping
        raise CorruptFileError(f"ANS binned model needs {count} bins but only {len(data) - offset} bytes remain")
    reader = _BitReader(data, offset)
    mantissa = reader.gamma("the mantissa parameter") - 1
    if mantissa > MAX_MANTISSA_PARAMETER:
        raise CorruptFileError(
            f"ANS binned model has mantissa parameter {mantissa}; expected at most {MAX_MANTISSA_PARAMETER}"
        )
    starts = np.empty(count, dtype=np.int64)
    widths = np.empty(count, dtype=np.int64)
    masses = np.empty(count, dtype=np.int64)
    start, exponent = first, 0
    for j in range(count):
        width = reader.gamma(f"bin {j}")
        step = reader.gamma(f"bin {j}") - 1
        exponent += step // 2 if step % 2 == 0 else -(step + 1) // 2
        if width > MAX_BIN_WIDTH or not 1 <= exponent <= MAX_MASS_BITS:
            raise CorruptFileError(
                f"ANS binned model: bin {j} has width {width} and mass exponent {exponent}; "
                f"expected a width below 2**{MODEL_PRECISION_BITS} and an exponent in 1..{MAX_MASS_BITS}"
            )
        bits = min(exponent - 1, max(0, (exponent + mantissa) // 2 - 1))
        masses[j] = ((1 << bits) + reader.bits(bits, f"bin {j}")) << (exponent - 1 - bits)
        starts[j], widths[j] = start, width
        start += width
        if j + 1 < count:
            start += reader.gamma(f"bin {j}") - 1
        if start > SYMBOL_LIMIT:
            raise CorruptFileError(
                f"ANS binned model reaches symbol {start - 1}; expected symbols below {SYMBOL_LIMIT}"
            )
    if count == 1 and widths[0] == 1:
        raise CorruptFileError("ANS binned model of a single symbol; that stream has its own layout (mode 1)")
    return Bins(starts, widths, masses, mantissa), reader.end()


class _BitReader:
    """Gamma codes and raw bits, MSB first, from byte ``offset`` of ``data``."""

    def __init__(self, data: bytes, offset: int):
        self.stream = bitarray()
        self.stream.frombytes(data[offset:])
        self.offset, self.pos = offset, 0

    def gamma(self, what: str) -> int:
        try:
            one = self.stream.index(1, self.pos, min(len(self.stream), self.pos + MAX_GAMMA_BITS))
        except ValueError:
            raise CorruptFileError(f"ANS model is truncated or damaged at {what}") from None
        length = one - self.pos + 1
        if one + length > len(self.stream):
            raise CorruptFileError(f"ANS model is truncated at {what}")
        self.pos = one + length
        return ba2int(self.stream[one : one + length])

    def bits(self, n: int, what: str) -> int:
        if n == 0:
            return 0
        if self.pos + n > len(self.stream):
            raise CorruptFileError(f"ANS model is truncated at {what}")
        self.pos += n
        return ba2int(self.stream[self.pos - n : self.pos])

    def end(self) -> int:
        """The byte after the model, once its padding bits are checked to be 0."""
        if self.stream[self.pos : -(-self.pos // 8) * 8].any():
            raise CorruptFileError("ANS model has non-zero padding bits")
        return self.offset + -(-self.pos // 8)


@numba.njit(cache=True)
def _bit_length(x):
    length = 0
    while x:
        length += 1
        x >>= 1
    return length


@numba.njit(cache=True)
def _mantissa_bits(exponent, mantissa):
    return min(exponent - 1, max(0, (exponent + mantissa) // 2 - 1))


@numba.njit(cache=True)
def _round_mass(target, mantissa):
    """The representable mass nearest to ``target`` (> 0) in ratio; ties: the smaller."""
    if target <= 1.0:
        return 1
    exponent = _bit_length(int(target))  # 2**(exponent - 1) <= target < 2**exponent
    bits = _mantissa_bits(exponent, mantissa)
    step = 1 << (exponent - 1 - bits)
    low = (1 << (exponent - 1)) + int((target - (1 << (exponent - 1))) // step) * step
    high = low + step  # 2**exponent at most: representable (the next exponent, mantissa 0)
    q = low if target * target <= low * high else high
    largest = (1 << MAX_MASS_BITS) - (1 << (MAX_MASS_BITS - 1 - _mantissa_bits(MAX_MASS_BITS, mantissa)))
    return min(q, largest)


@numba.njit(cache=True)
def _bin_search(alphabet, prefix, total, precision, log_total, mantissa, max_group):
    """Dynamic program over groups of consecutive distinct symbols (see :func:`choose_bins`).

    For each first symbol ``i`` the cheapest ``(end, width, mass)`` of its bin, given the best
    choice for everything after it. Costs in bits; the exponent step is assumed to cost
    ``_EXPONENT_STEP_BITS``."""
    distinct = alphabet.size
    best = np.full(distinct + 1, np.inf)
    best[distinct] = 0.0
    ends = np.zeros(distinct, dtype=np.int64)
    widths = np.zeros(distinct, dtype=np.int64)
    masses = np.zeros(distinct, dtype=np.int64)
    scale = 2.0**precision / total
    for i in range(distinct - 1, -1, -1):
        for j in range(i, min(distinct, i + max_group)):
            width = alphabet[j] - alphabet[i] + 1
            if width > MAX_BIN_WIDTH:
                break
            c = prefix[j + 1] - prefix[i]
            q = _round_mass(c * scale, mantissa)
            base = _EXPONENT_STEP_BITS + _mantissa_bits(_bit_length(q), mantissa)
            base += c * (log_total - math.log2(q)) + best[j + 1]
            last = j + 1 == distinct
            skip = 0.0 if last else 2.0 * _bit_length(alphabet[j + 1] - alphabet[j]) - 1.0  # gamma(z + 1)
            cost = base + 2.0 * _bit_length(width) - 1.0 + c * math.log2(width) + skip
            if cost < best[i]:
                best[i], ends[i], widths[i], masses[i] = cost, j, width, q
            if not last and alphabet[j + 1] - alphabet[j] > 1:  # stretch the bin to the next group
                width = alphabet[j + 1] - alphabet[i]
                if width <= MAX_BIN_WIDTH:
                    cost = base + 2.0 * _bit_length(width) - 1.0 + c * math.log2(width) + 1.0
                    if cost < best[i]:
                        best[i], ends[i], widths[i], masses[i] = cost, j, width, q
    return ends, widths, masses
