"""Binary fuse layout for the 3-wise XOR (Bloomier) construction: ~1.125 n cells instead of 1.23 n.

Same equation and contract as :mod:`weightcodec.codecs.bloomier` (every stored key reads back
exactly its value, any other position a uniform t-bit value), same peel and assign steps
(:func:`~weightcodec.codecs.bloomier.count_cells`, :func:`~weightcodec.codecs.bloomier.peel`,
:func:`~weightcodec.codecs.bloomier.assign_in_reverse`, reused as they are); only *where* a
key's three cells lie changes::

    f(v) = M(v) xor X[h0(v)] xor X[h1(v)] xor X[h2(v)]

Bloomier: one cell in each of three segments of m/3 cells. Binary fuse (Graf & Lemire,
"Binary Fuse Filters: Fast and Smaller Than Xor Filters", JEA 2022; after Dietzfelbinger &
Walzer's spatially coupled "fuse graphs", 2019): the table is cut into many segments of a
power-of-two length ``S``, and a key picks a window of three *consecutive* segments, one cell
in each::

    X: | seg 0 | seg 1 | seg 2 | seg 3 | ... | seg c-1 | seg c | seg c+1 |    m = (c + 2) S cells
                 [ h0 ----|- h1 ----|- h2 ]                                  key v: window at seg 1
                                 [ h0 ----|- h1 ----|- h2 ]                  key u: window at seg 2

Because windows overlap only locally, peeling starts at the thinly loaded ends and "fuses"
through the table like a wave; random 3-hypergraphs with this coupled structure peel up to a
load of ~0.89 keys per cell (1/0.89 = 1.125 cells per key) instead of 0.81 (1.23).

Sizes, as in the reference implementation (``xor_singleheader``, ``binaryfusefilter.h``)::

    S      = 2 ** floor(ln n / ln 3.33 + 2.25), at most 2**18  (4 for n = 1)
    factor = max(1.125, 0.875 + 0.25 * ln(10**6) / ln n)   (small n need more room)
    c      = max(1, ceil(round(factor * n) / S) - 2)        segments a window can start in
    m      = (c + 2) * S

So the gain is for large layers: ~1.125 t bits per key from about 10^6 keys (VGG-16 FC-6),
while a LeNet-300-100 layer (19 K keys) gets factor ~1.22, no better than the Bloomier filter.

Hashing (platform-stable, :mod:`weightcodec.codecs.hashing`)::

    h  = mix64(p XOR seed_key(seed)),   g = mix64(h + GAMMA)
    h0 = ((h >> 32) * c * S) >> 32                      window start cell, in [0, c S)
    h1 = (h0 + S)     XOR (g & (S - 1))                 same segment as h0 + S
    h2 = (h0 + 2 S)   XOR ((g >> 24) & (S - 1))         same segment as h0 + 2 S
    M  = g >> (64 - t)                                  bits 48..63: clear of both offsets

XOR with an offset below ``S`` keeps a cell in its segment, so the three cells are distinct.

Failure: a peel fails (non-empty 2-core) with a probability that is tiny for large n and a
few percent for small ones; the build retries the seeds ``seed, seed + 1, ...`` and, every
:data:`TRIES_PER_SIZE` failures, adds one segment. After :data:`MAX_TRIES` it raises
:class:`~weightcodec.errors.EncodeError`. The winning seed and the layout (``m``, ``S``) are
returned for the file's meta. Cells are bit-packed at exactly t bits
(:func:`~weightcodec.codecs.bloomier.pack_cells`), so the table is ``m * t`` bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numba
import numpy as np

from ..errors import CorruptFileError, EncodeError
from .bloomier import assign_in_reverse, count_cells, pack_cells, peel, unpack_cells
from .hashing import GAMMA, mix64, mix64_jit, seed_key
from .retrieval import MAX_SEED, check_build_args, output_array

__all__ = [
    "MAX_SEGMENT_LENGTH",
    "MAX_TRIES",
    "FuseTable",
    "fuse_layout",
    "fuse_hash",
    "fuse_build",
    "fuse_query",
    "fuse_decode_layer",
    "fuse_filter_build",
    "fuse_filter_decode",
]

ARITY = 3  # cells per key
MAX_SEGMENT_LENGTH = 1 << 18  # as binaryfusefilter.h: longer segments stop helping
MIN_FACTOR = 1.125  # cells per key for large n (peeling threshold of fuse graphs ~1.11)
MAX_TRIES = 64  # seeds tried before giving up
TRIES_PER_SIZE = 8  # failed tries before the table grows by one segment (tiny key sets)
MAX_CELLS = 1 << 32  # fastrange32 of the window start needs c * S < 2**32
_CHUNK = 1 << 16  # positions per parallel work item in the query kernels

_U24, _U32 = np.uint64(24), np.uint64(32)


@dataclass(frozen=True)
class FuseTable:
    """A built binary fuse table.

    Attributes
    ----------
    cells : ndarray of uint8 (t <= 8) or uint16, shape (m,)
        The table ``X``, ``m = (c + 2) * segment`` cells (0 when there are no keys).
    t : int
        Bits per cell and per value, 1..16.
    seed : int
        The winning hash seed.
    segment : int
        Segment length ``S`` (a power of two).
    """

    cells: np.ndarray
    t: int
    seed: int
    segment: int

    @property
    def m(self) -> int:
        """Number of cells."""
        return int(self.cells.size)


def fuse_layout(n: int, extra_segments: int = 0) -> tuple[int, int]:
    """Segment length and cell count for ``n`` keys: ``(S, m)``, ``m = (c + 2) * S``.

    Parameters
    ----------
    n : int
        Number of keys, ``>= 0``.
    extra_segments : int
        Segments added after failed tries (see module docstring).

    Returns
    -------
    (int, int)
        ``(0, 0)`` for ``n == 0``.

    Examples
    --------
    >>> fuse_layout(4_000_000)
    (16384, 4505600)
    >>> fuse_layout(19_000)
    (1024, 23552)
    """
    if n == 0:
        return 0, 0
    segment = 1 << int(math.floor(math.log(n) / math.log(3.33) + 2.25)) if n > 1 else 4
    segment = min(segment, MAX_SEGMENT_LENGTH)
    factor = max(MIN_FACTOR, 0.875 + 0.25 * math.log(1e6) / math.log(n)) if n > 1 else 2.0
    capacity = round(n * factor)
    count = max(1, -(-capacity // segment) - (ARITY - 1)) + extra_segments
    return segment, (count + ARITY - 1) * segment


@numba.njit(cache=True, inline="always")
def _fuse_cells(position, key, segment, window_cells, t):
    """Three cells and the mask of one position (all uint64); ``segment`` a power of two."""
    h = mix64_jit(position ^ key)
    g = mix64_jit(h + GAMMA)
    low = segment - np.uint64(1)
    c0 = ((h >> _U32) * window_cells) >> _U32
    c1 = (c0 + segment) ^ (g & low)
    c2 = (c0 + segment + segment) ^ ((g >> _U24) & low)
    return c0, c1, c2, g >> (np.uint64(64) - t)


@numba.njit(cache=True)
def _hash_kernel(positions, key, segment, window_cells, t, cells, masks):
    for i in range(positions.size):
        c0, c1, c2, mask = _fuse_cells(np.uint64(positions[i]), key, segment, window_cells, t)
        cells[i, 0] = c0
        cells[i, 1] = c1
        cells[i, 2] = c2
        masks[i] = mask


def fuse_hash(positions: np.ndarray, seed: int, segment: int, m: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """hash_positions for the fuse layout: the three cells and the mask of each position.

    Parameters
    ----------
    positions : ndarray of int64, shape (n,)
    seed : int
        Hash seed, ``0 <= seed < 2**64``.
    segment, m : int
        Layout from :func:`fuse_layout` (``m`` a multiple of ``segment``, ``>= 3 segment``).
    t : int
        Mask bits, 1..16.

    Returns
    -------
    cells : ndarray of int64, shape (n, 3)
        ``cells[i, j]`` lies in segment ``s_i + j`` for the key's window start ``s_i``.
    masks : ndarray of uint16, shape (n,)

    Examples
    --------
    >>> cells, _ = fuse_hash(np.arange(5), 0, 4, 24, 8)
    >>> bool(((cells[:, 1] // 4 == cells[:, 0] // 4 + 1) & (cells[:, 2] // 4 == cells[:, 0] // 4 + 2)).all())
    True
    """
    positions = np.ascontiguousarray(positions, dtype=np.int64)
    cells = np.empty((positions.size, ARITY), dtype=np.int64)
    masks = np.empty(positions.size, dtype=np.uint16)
    window_cells = np.uint64(m - (ARITY - 1) * segment)
    _hash_kernel(positions, seed_key(seed), np.uint64(segment), window_cells, np.uint64(t), cells, masks)
    return cells, masks


def fuse_build(keys: np.ndarray, values: np.ndarray, *, t: int, seed: int = 0) -> FuseTable:
    """Build a binary fuse table mapping each key to its value (peel and assign as Bloomier).

    Parameters
    ----------
    keys : ndarray of int, shape (n,)
        Unique positions, ``0 <= key < 2**62``, any order.
    values : ndarray of int, shape (n,)
        ``0 <= value < 2**t``.
    t : int
        Bits per cell, 1..16.
    seed : int, optional
        First seed of the retry sequence ``seed, seed + 1, ...`` (mod ``2**64``).

    Returns
    -------
    FuseTable

    Raises
    ------
    EncodeError
        On bad arguments (all listed, see :func:`~weightcodec.codecs.retrieval.check_build_args`),
        a layout over ``2**32`` cells, or no peel in :data:`MAX_TRIES` tries.

    Examples
    --------
    >>> table = fuse_build(np.array([3, 10, 42]), np.array([0, 1, 2]), t=4, seed=7)
    >>> fuse_query(table, np.array([3, 10, 42])).tolist()
    [0, 1, 2]
    """
    keys, values, t, seed = check_build_args(keys, values, t, seed, structure="binary fuse table")
    n = keys.size
    dtype = np.uint8 if t <= 8 else np.uint16
    if n == 0:
        return FuseTable(np.zeros(0, dtype), t, seed, 0)
    for attempt in range(MAX_TRIES):
        segment, m = fuse_layout(n, attempt // TRIES_PER_SIZE)
        if m > MAX_CELLS:
            raise EncodeError(f"{n} keys need {m} fuse cells; a table holds at most {MAX_CELLS}")
        trial_seed = (seed + attempt) % 2**64
        cells, masks = fuse_hash(keys, trial_seed, segment, m, t)
        order, private = peel(cells, *count_cells(cells, m))
        if order.size == n:
            return FuseTable(assign_in_reverse(cells, masks, values, order, private, m, t), t, trial_seed, segment)
    raise EncodeError(
        f"could not build a binary fuse table for {n} keys: no seed of {seed}..{seed + MAX_TRIES - 1} "
        "peels (duplicate-free keys fail this way with negligible probability); try another seed"
    )


@numba.njit(parallel=True, cache=True)
def _query_kernel(cells, key, segment, window_cells, t, positions, out):
    size = positions.size
    for chunk in numba.prange((size + _CHUNK - 1) // _CHUNK):
        for i in range(chunk * _CHUNK, min((chunk + 1) * _CHUNK, size)):
            c0, c1, c2, mask = _fuse_cells(np.uint64(positions[i]), key, segment, window_cells, t)
            out[i] = mask ^ cells[c0] ^ cells[c1] ^ cells[c2]
    return out


@numba.njit(parallel=True, cache=True)
def _decode_kernel(cells, key, segment, window_cells, t, lut, out):
    size = out.size
    for chunk in numba.prange((size + _CHUNK - 1) // _CHUNK):
        for p in range(chunk * _CHUNK, min((chunk + 1) * _CHUNK, size)):
            c0, c1, c2, mask = _fuse_cells(np.uint64(p), key, segment, window_cells, t)
            out[p] = lut[mask ^ cells[c0] ^ cells[c1] ^ cells[c2]]
    return out


def _kernel_args(table: FuseTable):
    """An empty table reads as three all-zero segments of length 1: values are the masks."""
    if table.m:
        cells, segment = table.cells, table.segment
    else:
        cells, segment = np.zeros(ARITY, dtype=table.cells.dtype), 1
    window = np.uint64(cells.size - (ARITY - 1) * segment)
    return cells, seed_key(table.seed), np.uint64(segment), window, np.uint64(table.t)


def fuse_query(table: FuseTable, positions: np.ndarray) -> np.ndarray:
    """Value of each position: ``M(p) ^ X[h0(p)] ^ X[h1(p)] ^ X[h2(p)]`` (parallel, chunked).

    Parameters
    ----------
    table : FuseTable
    positions : ndarray of int, shape (q,)
        Non-negative positions.

    Returns
    -------
    ndarray of uint16, shape (q,)

    Examples
    --------
    >>> table = fuse_build(np.array([5]), np.array([9]), t=4)
    >>> int(fuse_query(table, np.array([5]))[0])
    9
    """
    positions = np.ascontiguousarray(positions, dtype=np.int64).reshape(-1)
    out = np.empty(positions.size, dtype=np.uint16)
    return _query_kernel(*_kernel_args(table), positions, out)


def fuse_decode_layer(table: FuseTable, lut: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """Query every position ``0..size-1`` and map each value through ``lut`` (float32), in one pass.

    Written into ``out`` if given (:func:`~weightcodec.codecs.retrieval.output_array`), else a new array.

    Examples
    --------
    >>> table = fuse_build(np.array([1]), np.array([0]), t=8)
    >>> lut = np.zeros(256, np.float32); lut[0] = 0.5
    >>> float(fuse_decode_layer(table, lut, 3)[1])
    0.5
    """
    lut = np.ascontiguousarray(lut, dtype=np.float32)
    if lut.size != 2**table.t:
        raise CorruptFileError(f"lut has {lut.size} entries; t={table.t} needs {2**table.t}")
    return _decode_kernel(*_kernel_args(table), lut, output_array(size, out))


def fuse_filter_build(keys: np.ndarray, codes: np.ndarray, *, t: int, seed: int, ratio: float | None = None) -> tuple[dict, bytes]:
    """The weightless codec's ``Filter.build``: ``({"m", "segment", "seed"}, packed cells)``.

    ``ratio`` (Bloomier cells per key) does not apply: the fuse layout sizes itself.

    Examples
    --------
    >>> fuse_filter_build(np.array([2, 9]), np.array([1, 0]), t=4, seed=3)[0]
    {'m': 12, 'segment': 4, 'seed': 3}
    """
    table = fuse_build(keys, codes, t=t, seed=seed)
    return {"m": table.m, "segment": table.segment, "seed": table.seed}, pack_cells(table.cells, t)


def fuse_filter_decode(meta: Mapping[str, Any], table: bytes, lut: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The weightless codec's ``Filter.decode``: check the layout in ``meta``, unpack, decode.

    Raises
    ------
    CorruptFileError
        If ``m``, ``segment`` or ``seed`` are missing or inconsistent (``segment`` a power of
        two up to 2**18, ``m`` a multiple of it with room for one window, ``m >= n``; both 0
        iff ``n == 0``), or the table has the wrong length or padding.
    """
    t, n = int(meta["t"]), int(meta["n"])
    m, segment, seed = meta.get("m"), meta.get("segment"), meta.get("seed")
    ints = all(isinstance(x, int) and not isinstance(x, bool) for x in (m, segment, seed))
    if not ints or not 0 <= seed <= MAX_SEED:
        raise CorruptFileError(f"weightless fuse tensor has m={m!r}, segment={segment!r}, seed={seed!r}; expected ints")
    if n == 0:
        ok = m == 0 and segment == 0
    else:
        ok = (
            0 < segment <= MAX_SEGMENT_LENGTH
            and segment & (segment - 1) == 0
            and m % segment == 0
            and m >= ARITY * segment
            and n <= m <= MAX_CELLS
        )
    if not ok:
        raise CorruptFileError(
            f"weightless fuse tensor has m={m}, segment={segment} for n={n} keys; expected a power-of-two "
            f"segment <= {MAX_SEGMENT_LENGTH}, m a multiple of it, at least 3 segments and n (0 and 0 for n = 0)"
        )
    cells = unpack_cells(table, m, t) if m else np.zeros(0, np.uint8 if t <= 8 else np.uint16)
    return fuse_decode_layer(FuseTable(cells, t, seed, segment), lut, out.size, out)


# numpy twin of the kernel's hash, for readers of the module docstring and tests
def _fuse_cells_numpy(positions, seed, segment, m, t):
    h = mix64(np.asarray(positions, dtype=np.int64).astype(np.uint64) ^ seed_key(seed))
    g = mix64(h + GAMMA)
    low = np.uint64(segment - 1)
    window = np.uint64(m - (ARITY - 1) * segment)
    c0 = ((h >> _U32) * window) >> _U32
    c1 = (c0 + np.uint64(segment)) ^ (g & low)
    c2 = (c0 + np.uint64(2 * segment)) ^ ((g >> _U24) & low)
    return np.stack([c0, c1, c2], axis=1).astype(np.int64), (g >> np.uint64(64 - t)).astype(np.uint16)
