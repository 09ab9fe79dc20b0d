"""Context-adaptive binary arithmetic coding of a matrix of integer levels (DeepCABAC-style).

The :mod:`~weightcodec.codecs.uniform` codec stores a quantized tensor as integer levels on a
grid, most of them small and many zero. This module codes them without a position stream and
without a stored model: every level is turned into a few binary decisions (binarisation) and
each decision is coded with a probability that adapts to the decisions already coded in the
same *context* (Wiegand et al., "DeepCABAC", 2019; Marpe et al., CABAC, 2003).

Binarisation of level ``v`` (``m = |v|``, ``e`` = bit length of ``m``)::

    sig        m != 0                             context: neighbourhood class q
    sign       v < 0                              one adaptive context
    e > j      j = 1, 2, ... until false          context: q and j (j capped at MAX_UNARY)
    mantissa   the e - 1 bits of m below its      the first one: context e; the rest:
               leading 1, most significant first  equiprobable (bypass) bits

    level 0  ->  sig=0                    level -1 ->  sig=1 sign=1 (e>1)=0
    level 5  ->  sig=1 sign=0 (e>1)=1 (e>2)=1 (e>3)=0 mantissa 0 1

The neighbourhood class ``q`` (one of 25) says how large the levels around this one are,
relative to the tensor: the mean magnitude of the levels already coded in the same row, and
that of the levels above it in the same column, each divided by the mean magnitude of all
levels coded so far and cut into five classes. Rows and columns of a trained layer have their
own spread (an input feature with large weights, an output unit with small ones); the class
lets the coder learn one set of probabilities per spread. Adaptation also follows drift along
the tensor; both are free in the file (nothing is stored besides the coded bits). Each
context holds two probability estimates of "bit is 0" with 15 bits of precision, a fast one
(rate 1/16) and a slow one (rate 1/128), and codes with their mean: quick to learn, steady
once learned. The magnitude is binarised on a log scale, so a layer quantized to 1 bit or to
12 bits per weight costs a handful of binary decisions per level either way.

The arithmetic coder is the binary range coder of LZMA (Pavlov): a 32-bit range, a 64-bit
``low`` with carry propagation through a cached byte, five flush bytes. The decoder mirrors
the encoder decision by decision, so the two agree bit for bit; encoding is deterministic.

Stream: the coder's bytes, nothing else (the level count comes from the tensor's shape). A
reader decodes exactly ``rows * cols`` levels and fails with
:class:`~weightcodec.errors.CorruptFileError` if the stream ends early, holds a level
above :data:`MAX_LEVEL`, or is not consumed exactly. Like any arithmetic
code it is not a checksum: the container's CRC-32 is.
"""

from __future__ import annotations

import numba
import numpy as np

from ..errors import CorruptFileError, EncodeError

__all__ = ["MAX_LEVEL", "cabac_encode", "cabac_decode"]

# |level| bound: its bit length e <= MAX_BITS keeps every intermediate in int64.
MAX_BITS = 30
MAX_LEVEL = (1 << MAX_BITS) - 1
# Probability state: P(bit = 0) in 15 bits; the two adaptation rates (shifts) of the mixture.
PROB_BITS = 15
PROB_ONE = 1 << PROB_BITS
FAST_SHIFT, SLOW_SHIFT = 4, 7
# Range coder constants (LZMA): renormalise when the range drops below 2^24, one byte at a time.
TOP = 1 << 24
FLUSH_BYTES = 5
# Neighbourhood classes: row mean and column mean magnitude over the running tensor mean,
# each cut at these ratios (five classes each, 25 in all).
RATIO_EDGES = (0.6, 0.85, 1.15, 1.6)
CLASSES = 5 * 5
# Unary flags "e > j" beyond j = MAX_UNARY share the last context (rare: levels >= 2^12).
MAX_UNARY = 12
# Context layout: sig per class, one sign, unary per class and j, mantissa MSB per e.
SIG_BASE = 0
SIGN_CTX = CLASSES
UNARY_BASE = SIGN_CTX + 1
MANTISSA_BASE = UNARY_BASE + CLASSES * MAX_UNARY
NUM_CONTEXTS = MANTISSA_BASE + MAX_BITS + 1
# Decoder outcomes
_OK, _TRUNCATED, _BAD_LEVEL = 0, 1, 2


def cabac_encode(levels: np.ndarray) -> bytes:
    """Code a 2-D matrix of integer levels.

    Parameters
    ----------
    levels : ndarray of int, shape (rows, cols)
        Each ``|level| <= MAX_LEVEL``.

    Returns
    -------
    bytes
        The coded stream; ``b""`` for an empty matrix.

    Raises
    ------
    EncodeError
        If ``levels`` is not a 2-D integer array or a level is out of range.

    Examples
    --------
    >>> levels = np.array([[0, 1, -2], [0, 0, 5]])
    >>> cabac_decode(cabac_encode(levels), 2, 3).tolist()
    [[0, 1, -2], [0, 0, 5]]
    """
    levels = np.asarray(levels)
    if levels.ndim != 2 or levels.dtype.kind not in "iu":
        raise EncodeError(f"cabac_encode takes a 2-D integer array, got {levels.ndim}-D {levels.dtype}")
    if levels.size == 0:
        return b""
    levels = np.ascontiguousarray(levels, dtype=np.int64)
    peak = int(np.abs(levels).max())
    if peak > MAX_LEVEL:
        raise EncodeError(f"a level of magnitude {peak} exceeds the coder's limit {MAX_LEVEL}; use a larger step")
    out = np.empty(levels.size * 5 + 16, dtype=np.uint8)  # a bit never costs more than ~2x bypass
    used = _encode(levels, out)
    return out[:used].tobytes()


def cabac_decode(data: bytes, rows: int, cols: int, steps: np.ndarray | None = None) -> np.ndarray:
    """Inverse of :func:`cabac_encode`: the ``rows x cols`` levels, or the weights they stand for.

    Parameters
    ----------
    data : bytes
        From :func:`cabac_encode`.
    rows, cols : int
        The matrix shape.
    steps : ndarray of float32, shape (1, 1), (rows, 1) or (1, cols), optional
        Without it the levels come back as int32 (``MAX_LEVEL < 2**31``); with it, as float32
        ``float32(level) * step`` (what NumPy's ``levels.astype(np.float32) * steps`` gives),
        written as they are decoded, so a decoder holds nothing of the tensor's size but its
        output.

    Raises
    ------
    CorruptFileError
        If the stream does not start with a zero byte, ends before ``rows * cols`` levels are
        decoded, holds a level above :data:`MAX_LEVEL`, or has bytes left over after them.
    """
    scaled = steps is not None
    out = np.empty((rows, cols), dtype=np.float32 if scaled else np.int32)
    if rows * cols == 0:
        if len(data):
            raise CorruptFileError(f"level stream of an empty tensor holds {len(data)} bytes; expected 0")
        return out
    if len(data) < FLUSH_BYTES:
        raise CorruptFileError(f"level stream is {len(data)} bytes; a non-empty one has at least {FLUSH_BYTES}")
    if data[0] != 0:
        raise CorruptFileError(f"level stream starts with byte {data[0]}; the coder's first byte is always 0")
    buffer = np.frombuffer(data, dtype=np.uint8)
    if scaled:
        status, consumed = _decode(buffer, np.empty((0, 0), np.int32), out, np.ascontiguousarray(steps, np.float32))
    else:
        status, consumed = _decode(buffer, out, np.empty((0, 0), np.float32), np.ones((1, 1), np.float32))
    if status == _TRUNCATED:
        raise CorruptFileError(f"level stream of {len(data)} bytes ends before its {rows * cols} levels")
    if status == _BAD_LEVEL:
        raise CorruptFileError(f"level stream holds a level above {MAX_LEVEL}")
    if consumed != len(data):
        raise CorruptFileError(f"level stream has {len(data) - consumed} bytes after its {rows * cols} levels")
    return out


# ----------------------------------------------------------------------------- contexts


@numba.njit(cache=True, inline="always")
def _ratio_class(mean, overall):
    """0..4: ``mean`` against ``overall`` at :data:`RATIO_EDGES` (2 when nothing is known yet)."""
    if overall <= 0.0:
        return 2
    ratio = mean / overall
    k = 0
    for edge in RATIO_EDGES:
        if ratio > edge:
            k += 1
    return k


@numba.njit(cache=True, inline="always")
def _class(row_sum, c, col_sum, r, total_sum, total_count):
    """The neighbourhood class of the level at (r, c), from the magnitudes coded before it."""
    overall = total_sum / total_count if total_count else 0.0
    row_mean = row_sum / c if c else overall
    col_mean = col_sum / r if r else overall
    return _ratio_class(row_mean, overall) * 5 + _ratio_class(col_mean, overall)


@numba.njit(cache=True, inline="always")
def _update(fast, slow, ctx, bit):
    if bit == 0:
        fast[ctx] += (PROB_ONE - fast[ctx]) >> FAST_SHIFT
        slow[ctx] += (PROB_ONE - slow[ctx]) >> SLOW_SHIFT
    else:
        fast[ctx] -= fast[ctx] >> FAST_SHIFT
        slow[ctx] -= slow[ctx] >> SLOW_SHIFT


@numba.njit(cache=True, inline="always")
def _bit_length(m):
    e = 0
    while m >> e:
        e += 1
    return e


# ----------------------------------------------------------------------------- encoder


@numba.njit(cache=True)
def _encode(levels, out):
    """Encode ``levels`` into ``out``; returns the number of bytes written.

    Coder state lives in a small int64 array ``st``: low, range, cache, cache_size, out_pos.
    """
    fast = np.full(NUM_CONTEXTS, PROB_ONE // 2, dtype=np.int64)
    slow = np.full(NUM_CONTEXTS, PROB_ONE // 2, dtype=np.int64)
    st = np.zeros(5, dtype=np.int64)
    st[1] = 0xFFFFFFFF
    st[3] = 1
    rows, cols = levels.shape
    col_sums = np.zeros(cols, dtype=np.float64)
    total_sum, total_count = 0.0, 0
    for r in range(rows):
        row_sum = 0.0
        for c in range(cols):
            q = _class(row_sum, c, col_sums[c], r, total_sum, total_count)
            v = levels[r, c]
            m = abs(v)
            _enc_bit(st, out, fast, slow, SIG_BASE + q, 1 if m else 0)
            if m:
                _enc_bit(st, out, fast, slow, SIGN_CTX, 1 if v < 0 else 0)
                e = _bit_length(m)
                for j in range(1, e + 1):
                    flag = 1 if e > j else 0
                    _enc_bit(st, out, fast, slow, UNARY_BASE + q * MAX_UNARY + min(j, MAX_UNARY) - 1, flag)
                if e >= 2:
                    _enc_bit(st, out, fast, slow, MANTISSA_BASE + e, (m >> (e - 2)) & 1)
                for i in range(e - 3, -1, -1):
                    _enc_prob(st, out, PROB_ONE // 2, (m >> i) & 1)
            row_sum += m
            col_sums[c] += m
            total_sum += m
            total_count += 1
    for _ in range(FLUSH_BYTES):
        _shift_low(st, out)
    return st[4]
@numba.njit(cache=True, inline="always")
def _shift_low(st, out):
    low = st[0]
    if low < 0xFF000000 or low >= (1 << 32):
        carry = low >> 32
        temp = st[2]
        while True:
            out[st[4]] = (temp + carry) & 0xFF
            st[4] += 1
            temp = 0xFF
            st[3] -= 1
            if st[3] == 0:
                break
        st[2] = (low >> 24) & 0xFF
    st[3] += 1
    st[0] = (low & 0x00FFFFFF) << 8


@numba.njit(cache=True, inline="always")
def _enc_prob(st, out, prob0, bit):
    bound = (st[1] >> PROB_BITS) * prob0
    if bit == 0:
        st[1] = bound
    else:
        st[0] += bound
        st[1] -= bound
    while st[1] < TOP:
        st[1] <<= 8
        _shift_low(st, out)


@numba.njit(cache=True, inline="always")
def _enc_bit(st, out, fast, slow, ctx, bit):
    _enc_prob(st, out, (fast[ctx] + slow[ctx]) >> 1, bit)
    _update(fast, slow, ctx, bit)


# ----------------------------------------------------------------------------- decoder


@numba.njit(cache=True)
def _decode(data, levels, values, steps):
    """Decode into ``levels`` (int32), or, if ``levels`` is empty, into ``values`` scaled by ``steps``.

    Returns (status, bytes consumed). State ``st``: code, range, input position, truncated flag.
    Column sums are read from the second row on only, so a one-row matrix keeps none.
    """
    fast = np.full(NUM_CONTEXTS, PROB_ONE // 2, dtype=np.int64)
    slow = np.full(NUM_CONTEXTS, PROB_ONE // 2, dtype=np.int64)
    st = np.zeros(4, dtype=np.int64)
    st[1] = 0xFFFFFFFF
    for _ in range(FLUSH_BYTES):
        st[0] = ((st[0] << 8) | _next_byte(st, data)) & 0xFFFFFFFF
    scaled = levels.size == 0
    rows, cols = values.shape if scaled else levels.shape
    by_row, by_col = steps.shape[0] > 1, steps.shape[1] > 1
    col_sums = np.zeros(cols if rows > 1 else 0, dtype=np.float64)
    total_sum, total_count = 0.0, 0
    for r in range(rows):
        row_sum = 0.0
        for c in range(cols):
            q = _class(row_sum, c, col_sums[c] if r else 0.0, r, total_sum, total_count)
            m = 0
            negative = 0
            if _dec_bit(st, data, fast, slow, SIG_BASE + q):
                negative = _dec_bit(st, data, fast, slow, SIGN_CTX)
                e = 1
                while _dec_bit(st, data, fast, slow, UNARY_BASE + q * MAX_UNARY + min(e, MAX_UNARY) - 1):
                    e += 1
                    if e > MAX_BITS or st[3]:
                        return _BAD_LEVEL, st[2]
                m = 1
                if e >= 2:
                    m = 2 | _dec_bit(st, data, fast, slow, MANTISSA_BASE + e)
                for _ in range(e - 2):
                    m = (m << 1) | _dec_prob(st, data, PROB_ONE // 2)
            if st[3]:
                return _TRUNCATED, st[2]
            level = -m if negative else m
            if scaled:
                values[r, c] = np.float32(level) * steps[r if by_row else 0, c if by_col else 0]
            else:
                levels[r, c] = level
            row_sum += m
            if r + 1 < rows:
                col_sums[c] += m
            total_sum += m
            total_count += 1
    return _OK, st[2]


@numba.njit(cache=True, inline="always")
def _next_byte(st, data):
    if st[2] >= data.shape[0]:
        st[3] = 1
        return 0
    b = data[st[2]]
    st[2] += 1
    return np.int64(b)


@numba.njit(cache=True, inline="always")
def _dec_prob(st, data, prob0):
    bound = (st[1] >> PROB_BITS) * prob0
    if st[0] < bound:
        st[1] = bound
        bit = 0
    else:
        st[0] -= bound
        st[1] -= bound
        bit = 1
    while st[1] < TOP:
        st[1] <<= 8
        st[0] = ((st[0] << 8) | _next_byte(st, data)) & 0xFFFFFFFF
    return bit


@numba.njit(cache=True, inline="always")
def _dec_bit(st, data, fast, slow, ctx):
    bit = _dec_prob(st, data, (fast[ctx] + slow[ctx]) >> 1)
    _update(fast, slow, ctx, bit)
    return bit
