"""Bumped ribbon retrieval (BuRR): a static function from weight positions to t-bit codes.

Same contract as the Bloomier filter (:mod:`weightcodec.codecs.bloomier`): every stored key
(the linear position of a non-zero weight) reads back exactly its value (its cluster code,
``< K``); any other position reads a pseudo-random t-bit value, which is a code, so a false
positive, with probability ``K / 2**t``. No positions are stored. What changes is the space:
about ``1.003 * t`` to ``1.015 * t`` bits per key instead of ``1.23 * t``.

The equation
------------
Each key ``x`` hashes to a *start* row ``s(x)``, a 64-bit *coefficient row* ``c(x)`` (bit 0
always set) and a t-bit *mask* ``M(x)``. The table is a solution ``Z`` (``m`` rows of t bits)
of the linear system over GF(2)::

    XOR over j in 0..63 with bit j of c(x) set:  Z[s(x) + j]   =   value(x) XOR M(x)    for all keys x

i.e. one equation per key whose non-zero coefficients all lie in the *band* of ``w = 64``
columns starting at ``s(x)``. A query recomputes the left side from the stored ``Z`` and XORs
``M(x)`` back. For a non-key the left side is independent of ``M(x)``, so the result is a
uniformly random t-bit value: false-positive rate ``K / 2**t``, as for the Bloomier filter.

::

    rows (table Z)   0 1 2 3 4 5 6 7 8 9 ...                          m-1
    key a            [1 0 1 1 0 ... 1]                         c(a) placed at s(a) = 0
    key b                [1 1 0 1 ... 0 1]                     c(b) at s(b) = 1
    key c                      [1 0 0 ... 1 1]                 c(c) at s(c) = 4
                      \\________ w = 64 __________/
    sorted by start, the matrix is a band: Gaussian elimination only ever touches the
    64-bit word of the row being eliminated, so each step is one XOR, one count-trailing-zeros.

Ribbon ("Rapid Incremental Boolean Banding ON the fly", Dillinger & Walzer 2021) solves this
with on-the-fly elimination: to insert a key, XOR its row with the pivot row stored at its
leading column until it lands on an empty pivot (one write: the system stays in row echelon
form) or reduces to zero (linearly dependent: this key cannot be added). A back-substitution
from the last row to the first then computes ``Z``, t columns at once in 64-bit words.

Bumping (BuRR, Dillinger, Hübschle-Schneider, Sanders & Walzer, SEA 2022)
-------------------------------------------------------------------------
Plain ribbon needs ``m = (1 + eps) n`` rows with ``eps`` growing like ``log(n) / w``: a
stretch of rows where more keys start than there are rows overflows the band. BuRR instead
*overloads* the table (``m < n``, load :data:`LOAD` ~ 1.04) and, per bucket of ``B`` start
positions, *bumps* the keys that do not fit to the next layer, a smaller BuRR built with
fresh hashes for the bumped keys only. The keys of a bucket are inserted from the highest
offset down; at the first failure a threshold from a small table of levels is chosen and the
bucket's keys below it are removed (the most recent insertions: their rows are simply
cleared) and bumped. The level's index, :data:`META_BITS` bits per bucket, is the only
metadata; a query reads it to know whether its key lives in this layer or a later one::

    layer 0:  | bucket 0    | bucket 1    | bucket 2    | ...     overloaded, ~96 % of keys
                 thr=lvl 1     thr=lvl 0     thr=lvl 2           offsets < thr -> next layer
    layer 1:  | b0 | b1 | ...                                    ~4 % of keys
    layer 2:  | . |                                              ...
    last:     plain ribbon, m = (1 + eps) n + 64 rows, a few hundred keys at most

Why the overhead is small: every row of an overloaded bucket is used except those left empty
below the chosen threshold, and the levels are placed where failures happen; each bucket of
``B * t`` bits pays :data:`META_BITS` bits; each layer a few bytes of header. Measured
(``benchmarks/results/retrieval.md``, t = 8): 1.014 * t bits per key at 19 K keys, 1.003 * t
at 4 M keys, all metadata and headers included.

Failure: bumping layers never fail (a bucket can always bump all its keys). Only the last,
plain layer can: with ``eps`` from :data:`LAST_EPS` the chance is small, and a failed try is
retried with the next seed of a fixed sequence and a larger ``eps``; the winning try's index
is stored per layer. After :data:`MAX_TRIES` tries :func:`ribbon_build` raises
:class:`~weightcodec.errors.EncodeError`.

Hashing uses the platform-stable splitmix64 mixer of :mod:`weightcodec.codecs.hashing`::

    key_l = seed_key(seed + (layer << 56) + (try << 48))     one hash function per layer/try
    h1 = mix64(p XOR key_l),   h2 = mix64(h1 + GAMMA)
    s  = ((h1 >> 32) * num_starts) >> 32                    start row, num_starts = m - 63
    M  = h1 & (2**t - 1)                                     mask
    c  = h2 | 1                                              coefficient row (64 columns)

Table layout: see ``docs/codecs/ribbon.md`` and :func:`ribbon_build`.
"""

from __future__ import annotations

import struct
from typing import Any, Mapping

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ..errors import CorruptFileError, EncodeError
from .hashing import GAMMA, MAX_T, mix64_jit, seed_key
from .parallel import CHUNK, run_chunks
from .retrieval import check_build_args, output_array

__all__ = [
    "W",
    "LOAD",
    "BUCKET",
    "META_BITS",
    "LEVELS",
    "MAX_T",
    "MAX_TRIES",
    "ribbon_build",
    "ribbon_query",
    "ribbon_describe",
    "ribbon_decode_layer",
    "ribbon_filter_build",
    "ribbon_filter_decode",
    "ribbon_layer_seed",
]

#: numba and llvmlite release series the hand-written LLVM IR below was tested with.
TESTED_NUMBA, TESTED_LLVMLITE = "0.68", "0.50"
W = 64  # band width: one uint64 coefficient word per row
LOAD = 1.05  # keys per row of a bumping layer: overloaded on purpose, the excess is bumped
BUCKET = 128  # start positions per bucket: B * t bits of table per META_BITS of metadata
META_BITS = 2  # bits of threshold index per bucket (1, 2, 4 or 8: never straddles a byte)
# Bumping thresholds, as offsets within a bucket (keys starting below are bumped). Index 0 =
# no bumping, the last = bump the whole bucket; the middle ones sit where the first failure of
# an overloaded bucket usually happens (measured at LOAD, BUCKET above).
LEVELS = (0, BUCKET // 8, BUCKET // 4, BUCKET)
MIN_BUMP_KEYS = 512  # below this many keys, the next layer is the last, plain one
MAX_LAYERS = 12  # bumping layers at most (each keeps ~4 % of its keys); then the plain one
LAST_EPS = (0.05, 0.05, 0.1, 0.1, 0.2, 0.2, 0.4, 0.4, 0.8, 0.8, 1.6, 1.6, 3.2, 3.2, 6.4, 6.4)
MAX_TRIES = len(LAST_EPS)  # tries of the last layer, each with a new seed, before EncodeError
FORMAT_VERSION = 1
_CHUNK = CHUNK  # positions per work item of the lookup kernel (see .parallel)
_BLOCK = 1024  # positions hashed together, then read together: 4 scratch arrays of 8 KiB stay in L1/L2
# zero words after the last layer: a window read covers words first .. first + t + lanes - 1, where
# first + t is at most the layer's end and lanes <= 16 (_window_parities), so no read leaves the array
_WORD_PAD = 32

_HEADER = struct.Struct("<BBBBHBB Q")  # version, t, w, meta_bits, bucket, n_layers, n_levels, seed
_LAYER = struct.Struct("<IB")  # rows m, try index
_SEED_LAYER_SHIFT = 56
_SEED_TRY_SHIFT = 48


# ---------------------------------------------------------------------------------------------
# bit tricks


# LLVM bit intrinsics numba does not expose, written with its public extension API
# (numba.extending.intrinsic, llvmlite.ir.IRBuilder): one instruction each where the CPU has it.
# Pure numba code (a SWAR or xor-fold parity) was measured 2-7x slower for the decode kernel, as
# LLVM does not turn it into popcounts there. Because the IR is hand-written, numba and llvmlite
# are bounded to the versions it was tested with (pyproject.toml, constraints.txt); a test fails
# on any other.


@intrinsic
def _popcount(typingctx, x):
    """LLVM ctpop of a uint64: one POPCNT instruction where the CPU has it."""
    if x != types.uint64:
        return None  # no match: numba reports a typing error

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


@intrinsic
def _trailing_zeros(typingctx, x):
    """LLVM cttz of a non-zero uint64: one TZCNT instruction where the CPU has it."""
    if x != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return types.uint64(types.uint64), codegen


_U32 = np.uint64(32)
_ONE = np.uint64(1)
_SIX = np.uint64(6)  # start row >> 6 = its 64-row block of the solution
_SIXTY_THREE = np.uint64(63)  # start row & 63 = its offset in that block


@numba.njit(cache=True, inline="always")
def _hash(position, key, num_starts, tmask):
    """Start row, coefficient row and mask of one position for one layer (all uint64)."""
    h1 = mix64_jit(position ^ key)
    h2 = mix64_jit(h1 + GAMMA)
    start = ((h1 >> _U32) * num_starts) >> _U32  # fastrange32: num_starts < 2**32
    return start, h2 | _ONE, h1 & tmask


# ---------------------------------------------------------------------------------------------
# construction steps


@numba.njit(cache=True)
def _hash_keys(keys, key, num_starts, t):
    """hash_keys: start, coefficient row and (value-free) mask of every key of a layer.

    Takes int64 keys; returns (starts int64, coeffs uint64, masks uint16). Never fails.
    """
    n = keys.size
    starts = np.empty(n, np.int64)
    coeffs = np.empty(n, np.uint64)
    masks = np.empty(n, np.uint16)
    tmask = (_ONE << np.uint64(t)) - _ONE
    ns = np.uint64(num_starts)
    for i in range(n):
        s, c, m = _hash(np.uint64(keys[i]), key, ns, tmask)
        starts[i] = np.int64(s)
        coeffs[i] = c
        masks[i] = np.uint16(m)
    return starts, coeffs, masks


@numba.njit(cache=True, inline="always")
def _band_insert(C, R, start, coeff, result):
    """band_insert: add one equation to the band in row echelon form, on the fly.

    ``C[r]`` is the 64-bit coefficient word of the pivot row at ``r`` (bit 0 = column r, 0 =
    empty), ``R[r]`` its right-hand side. Returns the row the equation now occupies (the only
    row written), or -1 when it reduces to zero (linearly dependent: it does not fit).
    Rows never reach past ``m``: every coefficient lies in [start, start + 63] < m initially and
    XOR of such rows stays below m.
    """
    pos = start
    c = coeff
    r = result
    while True:
        other = C[pos]
        if other == 0:
            C[pos] = c
            R[pos] = r
            return pos
        c ^= other
        r ^= R[pos]
        if c == 0:
            return -1
        tz = _trailing_zeros(c)
        pos += np.int64(tz)
        c >>= tz


@numba.njit(cache=True)
def _bump_layer(order, starts, coeffs, results, m, bucket, levels):
    """bump_layer: insert a layer's keys bucket by bucket, bumping what does not fit.

    Parameters: ``order`` lists key indices by bucket, then by descending offset in the bucket;
    ``levels`` the thresholds (levels[0] = 0, levels[-1] = bucket). Returns (C, R, codes,
    bumped): the band, the level index per bucket and the indices of bumped keys. Never fails.
    """
    n = order.size
    num_starts = m - (64 - 1)
    n_buckets = (num_starts + bucket - 1) // bucket
    C = np.zeros(m, np.uint64)
    R = np.zeros(m, np.uint16)
    codes = np.zeros(n_buckets, np.uint8)
    bumped = np.empty(n, np.int64)
    n_bumped = 0
    stack_rows = np.empty(n, np.int64)  # insertions of the current bucket, for undoing
    stack_keys = np.empty(n, np.int64)
    stack_offs = np.empty(n, np.int64)
    n_levels = levels.size
    i = 0
    while i < n:
        b = starts[order[i]] // bucket
        base = b * bucket
        top = 0
        threshold = 0
        failed = False
        while i < n and starts[order[i]] // bucket == b:
            k = order[i]
            off = starts[k] - base
            i += 1
            if failed:  # descending offsets: everything after the failure is below threshold
                bumped[n_bumped] = k
                n_bumped += 1
                continue
            row = _band_insert(C, R, starts[k], coeffs[k], results[k])
            if row >= 0:
                stack_rows[top] = row
                stack_keys[top] = k
                stack_offs[top] = off
                top += 1
                continue
            level = 1
            while level < n_levels - 1 and levels[level] <= off:
                level += 1
            threshold = levels[level]
            codes[b] = level
            failed = True
            # the keys to undo are the latest insertions (lowest offsets): clearing their rows
            # leaves every earlier row valid, as no earlier row was reduced with them
            while top > 0 and stack_offs[top - 1] < threshold:
                top -= 1
                C[stack_rows[top]] = 0
                R[stack_rows[top]] = 0
                bumped[n_bumped] = stack_keys[top]
                n_bumped += 1
            bumped[n_bumped] = k
            n_bumped += 1
    return C, R, codes, bumped[:n_bumped]


@numba.njit(cache=True)
def _plain_layer(order, starts, coeffs, results, m):
    """plain_layer: insert every key (standard ribbon); returns (C, R, ok)."""
    C = np.zeros(m, np.uint64)
    R = np.zeros(m, np.uint16)
    for i in range(order.size):
        k = order[i]
        if _band_insert(C, R, starts[k], coeffs[k], results[k]) < 0:
            return C, R, False
    return C, R, True


@numba.njit(cache=True)
def _back_substitute(C, R, t):
    """back_substitute: solve the band from the last row up, t columns at a time.

    Returns the solution in interleaved blocks: for rows 64k..64k+63, word ``k * t + j`` holds
    column (value bit) j, bit r = row 64k + r. ``state[j]`` is the sliding 64-row window of
    column j above the current row. Empty rows (free variables) get 0.
    """
    m = C.size
    words = np.zeros((m // 64) * t, np.uint64)
    state = np.zeros(t, np.uint64)
    for i in range(m - 1, -1, -1):
        c = C[i]
        r = np.uint64(R[i])
        for j in range(t):
            s = state[j] << _ONE
            bit = (np.uint64(_popcount(c & s)) ^ (r >> np.uint64(j))) & _ONE
            if c == 0:
                bit = np.uint64(0)
            state[j] = s | bit
        if i % 64 == 0:
            blk = i // 64
            for j in range(t):
                words[blk * t + j] = state[j]
    return words


# ---------------------------------------------------------------------------------------------
# query
#
# A query is two steps per layer: hash the position (start row, coefficient row, mask; pure
# arithmetic) and read the t-bit parity vector of the 64-row window at the start row (memory).
# Done position by position, the hash's multiplies and the window's t scalar popcounts made
# ribbon decode ~3x slower than the Bloomier filter's. So the kernel works on blocks of
# positions, one layer at a time: a hash loop over the block that the compiler vectorizes
# (as it does the whole Bloomier query), a read loop in which each window is two vector loads
# and one vector popcount (:func:`_window_parities`), and a compaction that keeps only the
# positions the layer bumped (~4 %) for the next layer. Every layer writes its answer for all
# positions still in the block; a bumped position is overwritten by a later layer. The positions
# in play are copied into a block-local array once, so the hash loop reads it without a branch
# (``dense`` or not): with the branch inside, LLVM did not vectorize the loop and the FC-6 decode
# took ~1.5x the CPU time.


def _window_parities_lanes(lanes: int):
    """An intrinsic ``(address, first, second, c0, c1) -> uint64`` for ``lanes`` columns at once.

    ``address`` is the data address of a contiguous uint64 array ``words`` (``words.ctypes.data``).
    Bit j of the result is ``parity((words[first + j] & c0) ^ (words[second + j] & c1))`` for
    ``j < lanes``; ``second + lanes`` must be at most the array's length (the caller's padding
    guarantees it); lanes past ``t`` read the next columns or block and give bits the caller
    masks off. It is LLVM vector code: two ``<lanes x i64>`` loads, and/xor, ``ctpop``, the low
    bit of each lane packed into an integer (on AVX-512: vpopcntq and vpmovq2m; other targets
    get LLVM's expansion of the same operations).
    """
    i64 = ir.IntType(64)
    vec = ir.VectorType(i64, lanes)

    @intrinsic
    def parities(typingctx, address, first, second, c0, c1):
        if address not in (types.uintp, types.intp):
            return None  # no match: numba reports a typing error
        sig = types.uint64(address, types.uint64, types.uint64, types.uint64, types.uint64)

        def codegen(context, builder, signature, args):
            data = builder.inttoptr(args[0], i64.as_pointer())

            def load(index):
                return builder.load(builder.bitcast(builder.gep(data, [index]), vec.as_pointer()), align=8)

            def splat(word):
                one = builder.insert_element(ir.Constant(vec, ir.Undefined), word, ir.Constant(ir.IntType(32), 0))
                zeros = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
                return builder.shuffle_vector(one, ir.Constant(vec, ir.Undefined), zeros)

            x = builder.xor(builder.and_(load(args[1]), splat(args[3])), builder.and_(load(args[2]), splat(args[4])))
            module, name = builder.module, f"llvm.ctpop.v{lanes}i64"
            ctpop = module.globals.get(name) or ir.Function(module, ir.FunctionType(vec, [vec]), name)
            low_bits = builder.trunc(builder.call(ctpop, [x]), ir.VectorType(ir.IntType(1), lanes))
            return builder.zext(builder.bitcast(low_bits, ir.IntType(lanes)), i64)

        return sig, codegen

    return parities


_PARITIES_4, _PARITIES_8, _PARITIES_16 = (_window_parities_lanes(n) for n in (4, 8, 16))  # t <= 4, 8, 16


@numba.njit(cache=True, inline="always")
def _window_parities(address, first, t, start, coeff):
    """The left-hand side at start row ``start`` (bit j = column j) for coefficient row ``coeff``.

    ``address`` is the data address of the solution words (see :func:`_window_parities_lanes`).
    Column j of the 64-row window is ``words[first + j] >> sh`` joined with the next block's
    word ``<< (64 - sh)``, ``sh = start mod 64``. Instead of shifting t words, the coefficient
    row is shifted once: parity(window & coeff) = parity(lo & coeff << sh) xor parity(hi &
    coeff >> (64 - sh)); the second shift is done as ``(coeff >> 1) >> (63 - sh)``, which is 0
    for sh = 0 (a shift by 64 would be undefined). Bits ``j >= t`` are garbage.
    """
    sh = start & _SIXTY_THREE
    c0 = coeff << sh
    c1 = (coeff >> _ONE) >> (_SIXTY_THREE - sh)
    ut = np.uint64(t)
    if t <= 4:
        return _PARITIES_4(address, first, first + ut, c0, c1)
    if t <= 8:
        return _PARITIES_8(address, first, first + ut, c0, c1)
    return _PARITIES_16(address, first, first + ut, c0, c1)


@numba.njit(cache=True, nogil=True)
def _lookup_kernel(
    first_chunk, end_chunk, positions, dense, lut, out, t, keys, num_starts, thresholds, threshold_offsets,
    word_offsets, words, bucket_shift,
):
    """out[i] = lut[value(p_i)], p_i = i if ``dense`` else positions[i], for i in chunks first..end-1.

    A chunk is _CHUNK outputs; :func:`_lookup` runs disjoint chunk ranges on several threads (the
    GIL is released). Within a chunk, blocks of _BLOCK, layer by layer (see above). ``idx`` holds
    the output indices still in play: all of the block for layer 0, then those the previous
    layer bumped. A layer's ``thresholds`` (one per bucket, 0 for the last layer, which never
    bumps) say which start rows are bumped.
    """
    size = out.size
    tmask = (_ONE << np.uint64(t)) - _ONE
    ut = np.uint64(t)
    offset_mask = np.uint64((1 << bucket_shift) - 1)
    shift = np.uint64(bucket_shift)
    n_layers = keys.size
    address = words.ctypes.data  # the intrinsic reads ``words`` through its address
    idx = np.empty(_BLOCK, np.int64)
    keys_in_play = np.empty(_BLOCK, np.uint64)
    starts = np.empty(_BLOCK, np.uint64)
    coeffs = np.empty(_BLOCK, np.uint64)
    masks = np.empty(_BLOCK, np.uint64)
    for lo in range(first_chunk * _CHUNK, min(size, end_chunk * _CHUNK), _BLOCK):
        n = min(_BLOCK, size - lo)
        for i in range(n):
            idx[i] = lo + i
            keys_in_play[i] = np.uint64(lo + i) if dense else np.uint64(positions[lo + i])
        for layer in range(n_layers):
            key = keys[layer]
            ns = np.uint64(num_starts[layer])
            base = np.uint64(word_offsets[layer])
            thr_base = np.uint64(threshold_offsets[layer])
            for i in range(n):  # hash: vectorized by the compiler (a plain array read, no branch)
                start, coeff, mask = _hash(keys_in_play[i], key, ns, tmask)
                starts[i] = start
                coeffs[i] = coeff
                masks[i] = mask
            kept = 0
            for i in range(n):  # read the window, answer, keep the bumped (branch-free)
                start = starts[i]
                v = _window_parities(address, base + (start >> _SIX) * ut, t, start, coeffs[i])
                j = idx[i]
                out[j] = lut[(v ^ masks[i]) & tmask]
                idx[kept] = j
                keys_in_play[kept] = keys_in_play[i]
                kept += (start & offset_mask) < thresholds[thr_base + (start >> shift)]
            n = kept
            if n == 0:
                break


@numba.njit(cache=True, nogil=True)
def _empty_lookup_kernel(first_chunk, end_chunk, positions, dense, lut, out, key, t):
    """A table with no layers (no keys): out[i] = lut[mask of p_i], the layer-0 hash's low t bits."""
    tmask = (_ONE << np.uint64(t)) - _ONE
    for i in range(first_chunk * _CHUNK, min(out.size, end_chunk * _CHUNK)):
        p = np.uint64(i) if dense else np.uint64(positions[i])
        out[i] = lut[mix64_jit(p ^ key) & tmask]


# ---------------------------------------------------------------------------------------------
# public API


def ribbon_layer_seed(seed: int, layer: int, attempt: int) -> int:
    """The hash seed of ``layer`` on try ``attempt``: ``seed + (layer << 56) + (attempt << 48)`` mod 2**64.

    Examples
    --------
    >>> ribbon_layer_seed(7, 1, 2) == 7 + 2**56 + 2 * 2**48
    True
    """
    return (int(seed) + (int(layer) << _SEED_LAYER_SHIFT) + (int(attempt) << _SEED_TRY_SHIFT)) % 2**64


def ribbon_build(
    keys: np.ndarray,
    values: np.ndarray,
    t: int,
    *,
    seed: int = 0,
    load: float = LOAD,
    bucket: int = BUCKET,
    meta_bits: int = META_BITS,
    levels: tuple[int, ...] | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """Build a bumped ribbon retrieval table mapping each key to its t-bit value.

    Parameters
    ----------
    keys : ndarray of int, shape (n,)
        Unique positions, ``0 <= key < 2**62``, any order.
    values : ndarray of int, shape (n,)
        Values in ``[0, 2**t)`` (cluster codes).
    t : int
        Bits per value, 1 to 16.
    seed : int, keyword-only
        Base hash seed, ``0 <= seed < 2**64``. Same input and seed give the same bytes.
    load, bucket, meta_bits, levels : keyword-only
        Tuning of the bumping layers (keys per row, starts per bucket, threshold-index bits,
        threshold levels); the defaults are the measured best. ``levels`` must have
        ``2**meta_bits`` increasing entries from 0 to ``bucket``.

    Returns
    -------
    table : bytes
        Self-describing table (little-endian): header ``<BBBBHBBQ`` (version 1, t, w = 64,
        meta_bits, bucket, layers L, levels count, seed), levels as ``<u2``, L x ``<IB``
        (rows m, try index), then per layer the threshold codes (bucket-packed, LSB first,
        bumping layers only) and the solution words (``m / 64 * t`` x ``<u8``).
    params : dict
        ``{"filter": "ribbon", "t": t, "seed": seed, "n": n, "layers": [[m, try], ...]}``
        (informational except ``t``; the table alone is enough to query).

    Raises
    ------
    EncodeError
        On bad arguments (all listed, see :func:`~weightcodec.codecs.retrieval.check_build_args`),
        bad tuning, or if the last layer fails :data:`MAX_TRIES` times (the message
        gives n and the seed; try another seed).

    Examples
    --------
    >>> keys = np.array([3, 17, 42, 1000]); values = np.array([1, 0, 7, 3])
    >>> table, params = ribbon_build(keys, values, t=4, seed=1)
    >>> ribbon_query(table, params, keys).tolist()
    [1, 0, 7, 3]
    """
    keys, values, t, seed = check_build_args(keys, values, t, seed, structure="ribbon table")
    if levels is None:
        levels = LEVELS if bucket == BUCKET and meta_bits == META_BITS else _default_levels(bucket, meta_bits)
    levels_arr = _check_tuning(load, bucket, meta_bits, levels)
    n = keys.size
    layers: list[tuple[int, int]] = []
    blobs: list[bytes] = []
    current = np.arange(n, dtype=np.int64)
    layer = 0
    while current.size:
        sub_keys = keys[current]
        last = current.size < MIN_BUMP_KEYS or layer >= MAX_LAYERS
        if not last:
            m = max(2 * W, -(-int(np.ceil(current.size / load)) // W) * W)
            key = np.uint64(seed_key(ribbon_layer_seed(seed, layer, 0)))
            starts, coeffs, masks = _hash_keys(sub_keys, key, m - (W - 1), t)
            results = masks ^ values[current]
            order = _bucket_order(starts, bucket)
            C, R, codes, bumped = _bump_layer(order, starts, coeffs, results, m, bucket, levels_arr)
            if bumped.size == current.size:  # nothing fitted (cannot happen at sane loads): stop bumping
                last = True
            else:
                words = _back_substitute(C, R, t)
                # a layer that bumped nothing is the last one, and the last layer has no codes
                # (all its codes are 0, "no bumping", so dropping them changes no query)
                codes_bytes = _pack_codes(codes, meta_bits) if bumped.size else b""
                blobs.append(codes_bytes + words.astype("<u8").tobytes())
                layers.append((m, 0))
                current = current[np.sort(bumped)]
                layer += 1
                continue
        m, attempt, words = _build_last(sub_keys, values[current], t, seed, layer)
        blobs.append(words.astype("<u8").tobytes())
        layers.append((m, attempt))
        break
    header = _HEADER.pack(FORMAT_VERSION, t, W, meta_bits, bucket, len(layers), len(levels_arr), seed)
    header += np.asarray(levels_arr, dtype="<u2").tobytes()
    header += b"".join(_LAYER.pack(m, a) for m, a in layers)
    params = {"filter": "ribbon", "t": t, "seed": seed, "n": n, "layers": [list(x) for x in layers]}
    return header + b"".join(blobs), params


def ribbon_query(table: bytes, params: Mapping[str, Any], positions: np.ndarray) -> np.ndarray:
    """Read the t-bit value at each position (stored keys exact, others pseudo-random).

    Vectorized and run on threads (:func:`~weightcodec.codecs.parallel.run_chunks`); no memory
    beyond the output, so callers
    chunk a whole layer's positions to bound memory.

    Parameters
    ----------
    table : bytes
        From :func:`ribbon_build`.
    params : mapping
        From :func:`ribbon_build`; only ``t`` is read, and checked against the table.
    positions : ndarray of int, shape (q,)
        Non-negative positions.

    Returns
    -------
    ndarray of uint16, shape (q,)

    Raises
    ------
    CorruptFileError
        If the table is malformed (see :func:`ribbon_describe`) or disagrees with ``params``.

    Examples
    --------
    >>> table, params = ribbon_build(np.array([5]), np.array([2]), t=3)
    >>> int(ribbon_query(table, params, np.array([5]))[0])
    2
    """
    parsed = _parse(table)
    if "t" in params and int(params["t"]) != parsed["t"]:
        raise CorruptFileError(f"ribbon table has t = {parsed['t']} but its parameters say t = {params['t']}")
    positions = np.ascontiguousarray(positions, dtype=np.int64).ravel()
    out = np.empty(positions.size, dtype=np.uint16)
    identity = np.arange(1 << parsed["t"], dtype=np.uint16)  # the kernel maps values through a lut
    return _lookup(parsed, positions, False, identity, out)


def ribbon_decode_layer(table: bytes, lut: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """Query every position ``0..size-1`` and map each value through ``lut``, in one parallel pass.

    The layer decoder of the weightless codec: with ``lut[v] = centroid[v]`` for stored codes
    and 0 above them it writes the dense weights directly, without materialising positions.

    Parameters
    ----------
    table : bytes
        From :func:`ribbon_build`.
    lut : ndarray of float32, shape (2**t,)
        Output for each possible value.
    size : int
        Positions to decode, ``>= 0``.
    out : ndarray of float32, shape (size,), optional
        Where to write them (see :func:`~weightcodec.codecs.retrieval.output_array`); default a new array.

    Returns
    -------
    ndarray of float32, shape (size,)
        ``out``, or the new array.

    Raises
    ------
    CorruptFileError
        If the table is malformed or ``lut`` does not have ``2**t`` entries.

    Examples
    --------
    >>> table, _ = ribbon_build(np.array([1]), np.array([0]), t=8)
    >>> lut = np.zeros(256, np.float32); lut[0] = 0.5
    >>> float(ribbon_decode_layer(table, lut, 3)[1])
    0.5
    """
    parsed = _parse(table)
    lut = np.ascontiguousarray(lut, dtype=np.float32)
    if lut.shape != (1 << parsed["t"],):
        raise CorruptFileError(f"ribbon lut has shape {lut.shape}; t = {parsed['t']} needs ({1 << parsed['t']},)")
    size = int(size)
    if size < 0:
        raise CorruptFileError(f"ribbon layer size {size} is negative")
    return _lookup(parsed, np.zeros(0, np.int64), True, lut, output_array(size, out))


def ribbon_filter_build(keys: np.ndarray, codes: np.ndarray, *, t: int, seed: int, ratio: float | None = None) -> tuple[dict, bytes]:
    """The weightless codec's ``Filter.build``: ``(meta params, table bytes)``.

    ``ratio`` (the Bloomier table's cells per key) does not apply: ribbon sizes itself.
    The params are ``{"seed": seed, "m": rows of all layers}``.

    Examples
    --------
    >>> ribbon_filter_build(np.array([2, 9]), np.array([1, 0]), t=4, seed=3)[0]
    {'seed': 3, 'm': 128}
    """
    table, params = ribbon_build(keys, codes, t, seed=seed)
    return {"seed": params["seed"], "m": int(sum(m for m, _ in params["layers"]))}, table


def ribbon_filter_decode(meta: Mapping[str, Any], table: bytes, lut: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The weightless codec's ``Filter.decode``: check ``meta`` against the table, then decode.

    Raises
    ------
    CorruptFileError
        If the table is malformed or disagrees with ``meta`` (t, seed, m).
    """
    d = ribbon_describe(table)
    for name, value in (("t", d["t"]), ("seed", d["seed"]), ("m", d["rows"] if d["layers"] else 0)):
        if name in meta and meta[name] != value:
            raise CorruptFileError(f"weightless tensor says {name}={meta[name]!r} but its ribbon table has {name}={value}")
    return ribbon_decode_layer(table, lut, out.size, out)


def ribbon_describe(table: bytes) -> dict[str, Any]:
    """Figures of a table: t, layers (rows, try), bytes, and the bound ``n * t`` is the caller's.

    Raises
    ------
    CorruptFileError
        If the header is truncated, has an unknown version or w, t outside 1..16, levels
        that are not increasing from 0 to the bucket size, or a length that does not match
        the layers it declares.

    Examples
    --------
    >>> table, _ = ribbon_build(np.arange(10), np.zeros(10, int), t=2)
    >>> d = ribbon_describe(table); d["t"], d["layers"]
    (2, [[128, 0]])
    """
    parsed = _parse(table)
    return {
        "t": parsed["t"],
        "w": W,
        "bucket": parsed["bucket"],
        "meta_bits": parsed["meta_bits"],
        "levels": parsed["levels"].tolist(),
        "seed": parsed["seed"],
        "layers": [[int(m), int(a)] for m, a in zip(parsed["rows"], parsed["tries"])],
        "rows": int(parsed["rows"].sum()),
        "bytes": len(table),
    }


# ---------------------------------------------------------------------------------------------
# helpers


def _lookup(parsed, positions: np.ndarray, dense: bool, lut: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Fill ``out[i] = lut[value(p_i)]`` (``p_i = i`` if ``dense`` else ``positions[i]``) and return it.

    The chunks are split into one contiguous range per thread (:func:`run_chunks`).
    """
    if not parsed["rows"].size:
        args = (positions, dense, lut, out, _empty_key(parsed), parsed["t"])
        run_chunks(_empty_lookup_kernel, out.size, args)
    else:
        args = (
            positions, dense, lut, out, parsed["t"], parsed["keys"], parsed["rows"] - (W - 1), parsed["thresholds"],
            parsed["threshold_offsets"], parsed["word_offsets"], parsed["words"], parsed["bucket"].bit_length() - 1,
        )
        run_chunks(_lookup_kernel, out.size, args)
    return out


def _empty_key(parsed) -> np.uint64:
    """Hash key of a table with no layers (no keys): every position reads its layer-0 mask."""
    return np.uint64(seed_key(ribbon_layer_seed(parsed["seed"], 0, 0)))


def _default_levels(bucket: int, meta_bits: int) -> tuple[int, ...]:
    count = 1 << meta_bits
    # intermediate levels spread over the lowest quarter of the bucket, where failures happen
    inner = [round(bucket / 4 * j / (count - 2)) for j in range(1, count - 1)]
    return (0, *inner, bucket)


def _check_tuning(load, bucket, meta_bits, levels) -> np.ndarray:
    problems = []
    if not 1.0 <= float(load) <= 2.0:
        problems.append(f"load = {load} is outside [1, 2]")
    if meta_bits not in (1, 2, 4, 8):
        problems.append(f"meta_bits = {meta_bits} is not one of 1, 2, 4, 8")
    if not (1 <= int(bucket) < 2**16 and int(bucket) & (int(bucket) - 1) == 0):
        problems.append(f"bucket = {bucket} is not a power of two below 65536")
    levels = np.asarray(levels, dtype=np.int64)
    if meta_bits in (1, 2, 4, 8) and (
        levels.size != 1 << meta_bits or levels[0] != 0 or levels[-1] != bucket or np.any(np.diff(levels) <= 0)
    ):
        problems.append(f"levels {levels.tolist()} must be {1 << meta_bits} increasing values from 0 to bucket {bucket}")
    if problems:
        raise EncodeError("bad ribbon tuning: " + "; ".join(problems))
    return levels


def _bucket_order(starts: np.ndarray, bucket: int) -> np.ndarray:
    """Key indices by bucket, then by descending offset within it (stable: ties by index)."""
    b = starts // bucket
    sort_key = b * bucket + (bucket - 1 - (starts - b * bucket))
    return np.argsort(sort_key, kind="stable")


def _build_last(keys, values, t, seed, layer):
    """The last layer: plain ribbon, retried over a fixed sequence of seeds and sizes."""
    n = keys.size
    for attempt, eps in enumerate(LAST_EPS):
        m = -(-(int(np.ceil(n * (1 + eps))) + W) // W) * W
        key = np.uint64(seed_key(ribbon_layer_seed(seed, layer, attempt)))
        starts, coeffs, masks = _hash_keys(keys, key, m - (W - 1), t)
        order = np.argsort(starts, kind="stable")
        C, R, ok = _plain_layer(order, starts, coeffs, masks ^ values, m)
        if ok:
            return m, attempt, _back_substitute(C, R, t)
    raise EncodeError(
        f"ribbon construction failed: the last layer ({n} keys) did not solve in {MAX_TRIES} tries "
        f"with seed {seed}; this is astronomically unlikely for distinct keys, try another seed"
    )


def _pack_codes(codes: np.ndarray, meta_bits: int) -> bytes:
    per_byte = 8 // meta_bits
    padded = np.zeros(-(-codes.size // per_byte) * per_byte, dtype=np.uint8)
    padded[: codes.size] = codes
    shifts = (np.arange(per_byte, dtype=np.uint8) * meta_bits).astype(np.uint8)
    return np.bitwise_or.reduce(padded.reshape(-1, per_byte) << shifts, axis=1).astype(np.uint8).tobytes()


def _code_bytes(rows: int, bucket: int, meta_bits: int) -> int:
    n_buckets = -(-(rows - (W - 1)) // bucket)
    return -(-n_buckets * meta_bits // 8)


def _bucket_thresholds(codes: np.ndarray, n_buckets: int, meta_bits: int, levels: np.ndarray) -> np.ndarray:
    """Unpack a layer's threshold codes into the threshold of each bucket (uint16).

    ``codes`` are the layer's code bytes (bucket ``i`` in bits ``i*b .. i*b+b-1``, LSB first),
    empty for the last layer, whose buckets never bump (threshold 0). Every ``b``-bit code
    indexes ``levels``, which has exactly ``2**b`` entries, so nothing here can be out of range.
    """
    if not codes.size:
        return np.zeros(n_buckets, np.uint16)
    bits = np.arange(n_buckets, dtype=np.int64) * meta_bits
    code = (codes[bits >> 3].astype(np.int64) >> (bits & 7)) & ((1 << meta_bits) - 1)
    return levels[code].astype(np.uint16)


def _parse(table: bytes) -> dict[str, Any]:
    """Check a table's header and lengths; views of its parts (nothing is trusted)."""
    if not isinstance(table, (bytes, bytearray, memoryview)):
        raise CorruptFileError(f"ribbon table must be bytes; got {type(table).__name__}")
    table = bytes(table)
    if len(table) < _HEADER.size:
        raise CorruptFileError(f"ribbon table is {len(table)} bytes; the header alone needs {_HEADER.size}")
    version, t, w, meta_bits, bucket, n_layers, n_levels, seed = _HEADER.unpack_from(table, 0)
    problems = []
    if version != FORMAT_VERSION:
        problems.append(f"version {version} (this reader knows {FORMAT_VERSION})")
    if w != W:
        problems.append(f"band width {w} (expected {W})")
    if not 1 <= t <= MAX_T:
        problems.append(f"t = {t} (expected 1..{MAX_T})")
    if meta_bits not in (1, 2, 4, 8) or n_levels != 1 << meta_bits:
        problems.append(f"meta_bits = {meta_bits} with {n_levels} levels (expected 1, 2, 4 or 8 bits, 2**bits levels)")
    if bucket < 1 or bucket & (bucket - 1) or n_layers > MAX_LAYERS + 1:
        problems.append(f"bucket {bucket}, {n_layers} layers (expected a power-of-two bucket, at most {MAX_LAYERS + 1} layers)")
    if problems:
        raise CorruptFileError("ribbon table header is damaged: " + "; ".join(problems))
    offset = _HEADER.size
    need = offset + 2 * n_levels + _LAYER.size * n_layers
    if len(table) < need:
        raise CorruptFileError(f"ribbon table is {len(table)} bytes; its header declares {need}")
    levels = np.frombuffer(table, dtype="<u2", count=n_levels, offset=offset).astype(np.int64)
    offset += 2 * n_levels
    if levels[0] != 0 or levels[-1] != bucket or np.any(np.diff(levels) <= 0):
        raise CorruptFileError(f"ribbon levels {levels.tolist()} are not increasing from 0 to bucket {bucket}")
    rows = np.empty(n_layers, np.int64)
    tries = np.empty(n_layers, np.int64)
    for i in range(n_layers):
        rows[i], tries[i] = _LAYER.unpack_from(table, offset)
        offset += _LAYER.size
    if np.any(rows < 2 * W) or np.any(rows % W) or np.any(tries >= MAX_TRIES):
        raise CorruptFileError(
            f"ribbon layers {list(zip(rows.tolist(), tries.tolist()))} are damaged "
            f"(rows must be multiples of {W}, at least {2 * W}; tries below {MAX_TRIES})"
        )
    code_sizes = [(_code_bytes(int(m), bucket, meta_bits) if i < n_layers - 1 else 0) for i, m in enumerate(rows)]
    word_sizes = [int(m) // W * t * 8 for m in rows]
    expected = offset + sum(code_sizes) + sum(word_sizes)
    if len(table) != expected:
        raise CorruptFileError(f"ribbon table is {len(table)} bytes; its {n_layers} layers need exactly {expected}")
    thresholds, words = [], []
    threshold_offsets = np.zeros(max(n_layers, 1), np.int64)
    word_offsets = np.zeros(max(n_layers, 1), np.int64)
    threshold_pos = word_pos = 0
    for i in range(n_layers):
        threshold_offsets[i], word_offsets[i] = threshold_pos, word_pos
        n_buckets = -(-(int(rows[i]) - (W - 1)) // bucket)
        codes = np.frombuffer(table, dtype=np.uint8, count=code_sizes[i], offset=offset)
        thresholds.append(_bucket_thresholds(codes, n_buckets, meta_bits, levels))
        offset += code_sizes[i]
        words.append(np.frombuffer(table, dtype="<u8", count=word_sizes[i] // 8, offset=offset))
        offset += word_sizes[i]
        threshold_pos += n_buckets
        word_pos += word_sizes[i] // 8
    keys = np.array(
        [seed_key(ribbon_layer_seed(seed, i, int(tries[i]))) for i in range(n_layers)], dtype=np.uint64
    )
    return {
        "t": t,
        "seed": seed,
        "bucket": bucket,
        "meta_bits": meta_bits,
        "levels": levels,
        "rows": rows,
        "tries": tries,
        "keys": keys,
        "thresholds": np.concatenate(thresholds) if thresholds else np.zeros(0, np.uint16),
        "threshold_offsets": threshold_offsets,
        "words": np.concatenate(words + [np.zeros(_WORD_PAD, "<u8")]).astype(np.uint64),
        "word_offsets": word_offsets,
    }
