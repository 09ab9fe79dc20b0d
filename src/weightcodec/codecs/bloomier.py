"""Bloomier filter: a static function from weight positions to t-bit codes, with no positions stored.

What it stores
--------------
A table ``X`` of ``m`` cells of ``t`` bits, split into three segments of ``L = m / 3`` cells.
Each key ``v`` (a linear weight position) hashes to one cell per segment, ``h0(v), h1(v),
h2(v)``, and to a t-bit mask ``M(v)`` (:mod:`weightcodec.codecs.hashing`). The table is built
so that for every stored key::

    f(v) = M(v) xor X[h0(v)] xor X[h1(v)] xor X[h2(v)]

::

    key v --hash--> h0 ----------+      h1 --------------+      h2 -------------+
                                 v                       v                      v
    X: [ . . . . . c . . . . | . . . . . . . c . . | . . c . . . . . . ]   m = 3 L cells
          segment 0 (L cells)    segment 1              segment 2           t bits each
    f(v) = M(v) ^ X[h0] ^ X[h1] ^ X[h2]

A position that was never stored reads three unrelated cells and a random mask, so its value
is uniform on ``[0, 2**t)``: with codes ``0..K-1`` it is a false positive with probability
``K / 2**t`` and reads as "absent" otherwise (Weightless turns "absent" into a zero weight).

How it is built (Chazelle, Kilian, Rubinfeld & Tal 2004; the same peeling as MWHC hashing
and XOR filters)
------------------------------------------------------------------------------------------
The keys are the edges of a 3-uniform hypergraph on the cells. :func:`count_cells` counts
the keys on each cell; :func:`peel` repeatedly takes a cell holding exactly one key, makes it
that key's private cell and removes the key. If every key is removed (the hypergraph's 2-core
is empty), :func:`assign_in_reverse` walks the keys in reverse peeling order and sets each
private cell so the key's equation holds: the private cell is untouched by every key assigned
before it, so the equations never interfere.

Why it costs about 1.23 n t bits
--------------------------------
A random 3-uniform hypergraph with ``n`` edges on ``m`` vertices has an empty 2-core with
high probability iff ``m / n > 1.2218`` (Molloy 2005; Botelho, Pagh & Ziviani 2007), so
``m = 1.23 n + 32`` cells suffice (the 32 spare cells, as in Lemire's XOR filters, keep tiny
tables from failing) and the table costs ``m * t ~ 1.23 n t`` bits, 23 % above the ``n t``
bits any retrieval structure needs. Cells are bit-packed at exactly ``t`` bits
(:func:`pack_cells`).

How often construction fails
----------------------------
Measured at ratio 1.23, per seed: never for 1-2 keys (0 of 1000); under 1 % for 5-10
keys (two keys landing on the same three cells); 4-11 % from 30 to 10^4 keys, where the
finite-size 2-core is likeliest (the same as with truly random cells); 0 of 300 seeds at
10^5 and 0 of 100 at 10^6 keys. A failed peel is retried with the next seed of the fixed
sequence ``seed, seed + 1, ...``, at most :data:`MAX_TRIES` (32) times, so a legitimate key
set exhausts them with probability below 0.11^32; the winning seed is stored. Duplicate keys
can never be peeled and are rejected up front; a ratio below the threshold exhausts the tries
and raises :class:`~weightcodec.errors.EncodeError`.

References
----------
* B. Chazelle, J. Kilian, R. Rubinfeld, A. Tal, "The Bloomier filter", SODA 2004.
* D. Charles, K. Chellapilla, "Bloomier filters: a second look", ESA 2008.
* T. M. Graf, D. Lemire, "Xor filters: faster and smaller than Bloom and cuckoo filters",
  JEA 2020 (``xor_singleheader``).
* B. Reagen et al., "Weightless: lossy weight encoding for deep neural network
  compression", ICML 2018.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from ..errors import CorruptFileError, EncodeError
from .hashing import K_HASHES, MAX_SEGMENT, cells_and_mask_jit, hash_positions, seed_key
from .retrieval import check_build_args, is_int, output_array

__all__ = [
    "DEFAULT_RATIO",
    "MAX_TRIES",
    "SLACK_CELLS",
    "BloomierTable",
    "bloomier_size",
    "bloomier_build",
    "bloomier_query",
    "bloomier_decode_layer",
    "count_cells",
    "peel",
    "assign_in_reverse",
    "pack_cells",
    "unpack_cells",
]

DEFAULT_RATIO = 1.23  # just above the 3-hypergraph peeling threshold 1.2218
SLACK_CELLS = 32  # extra cells so that small tables peel too (xor_singleheader uses 32)
MAX_TRIES = 32  # seeds tried before giving up; at ratio >= 1.23 one try almost always suffices
_CHUNK = 1 << 16  # positions per parallel work item in the query kernels


@dataclass(frozen=True)
class BloomierTable:
    """A built Bloomier filter.

    Attributes
    ----------
    cells : numpy.ndarray of uint8 (t <= 8) or uint16 (t <= 16), shape (m,)
        The table ``X``; ``m`` is 0 (no keys) or a multiple of 3.
    t : int
        Bits per cell and per value, 1..16.
    seed : int
        The hash seed the table was built with (the winning one of the retry sequence).
    """

    cells: np.ndarray
    t: int
    seed: int

    @property
    def m(self) -> int:
        """Number of cells."""
        return int(self.cells.size)


def _cell_dtype(t: int) -> np.dtype:
    return np.dtype(np.uint8) if t <= 8 else np.dtype(np.uint16)


def bloomier_size(n: int, ratio: float = DEFAULT_RATIO) -> int:
    """Cells of a table for ``n`` keys: ``3 * ceil((ratio * n + 32) / 3)``, or 0 when ``n == 0``.

    Examples
    --------
    >>> bloomier_size(0), bloomier_size(1), bloomier_size(1_000_000)
    (0, 36, 1230033)
    """
    if n == 0:
        return 0
    return K_HASHES * math.ceil((ratio * n + SLACK_CELLS) / K_HASHES)


# ----------------------------------------------------------------------------- build steps


@numba.njit(cache=True)
def _count_cells_kernel(cells, m):
    counts = np.zeros(m, dtype=np.int32)
    key_xor = np.zeros(m, dtype=np.int64)
    for key in range(cells.shape[0]):
        for j in range(cells.shape[1]):
            c = cells[key, j]
            counts[c] += 1
            key_xor[c] ^= key
    return counts, key_xor


def count_cells(cells: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Degree of every cell and the XOR of the indices of the keys on it.

    Parameters
    ----------
    cells : numpy.ndarray of int64, shape (n, 3)
        Cells of each key, from :func:`~weightcodec.codecs.hashing.hash_positions`.
    m : int
        Number of cells; every entry of ``cells`` is below it.

    Returns
    -------
    counts : numpy.ndarray of int32, shape (m,)
        Keys per cell.
    key_xor : numpy.ndarray of int64, shape (m,)
        XOR of the key indices (rows of ``cells``) on each cell: where ``counts`` is 1 it
        *is* the index of the only key, which lets :func:`peel` work without adjacency lists.

    Examples
    --------
    >>> counts, key_xor = count_cells(np.array([[0, 1, 2], [0, 1, 3]]), 4)
    >>> counts.tolist(), key_xor.tolist()
    ([2, 2, 1, 1], [1, 1, 0, 1])
    """
    return _count_cells_kernel(cells, m)


@numba.njit(cache=True)
def _peel_kernel(cells, counts, key_xor):
    m = counts.size
    queue = np.empty(m, dtype=np.int64)  # a cell enters at most once: its count only falls to 1 once
    tail = 0
    for c in range(m):
        if counts[c] == 1:
            queue[tail] = c
            tail += 1
    order = np.empty(cells.shape[0], dtype=np.int64)
    private = np.empty(cells.shape[0], dtype=np.int64)
    peeled = 0
    head = 0
    while head < tail:
        c = queue[head]
        head += 1
        if counts[c] != 1:  # its last key was peeled through another cell
            continue
        key = key_xor[c]
        order[peeled] = key
        private[peeled] = c
        peeled += 1
        for j in range(cells.shape[1]):
            cj = cells[key, j]
            key_xor[cj] ^= key
            counts[cj] -= 1
            if counts[cj] == 1:
                queue[tail] = cj
                tail += 1
    return order[:peeled], private[:peeled]


def peel(cells: np.ndarray, counts: np.ndarray, key_xor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Peel the 3-hypergraph: repeatedly remove a key that is alone on one of its cells.

    Parameters
    ----------
    cells : numpy.ndarray of int64, shape (n, 3)
        Cells of each key.
    counts, key_xor : numpy.ndarray
        From :func:`count_cells`; not modified (the peel works on copies).

    Returns
    -------
    order : numpy.ndarray of int64, shape (p,)
        Key indices in peeling order.
    private : numpy.ndarray of int64, shape (p,)
        ``private[i]`` is the cell that was ``order[i]``'s alone when it was peeled.
        Peeling succeeded iff ``p == n``; otherwise the remaining keys form a 2-core and the
        caller must retry with another seed.

    Examples
    --------
    >>> cells = np.array([[0, 1, 2], [0, 1, 3]])
    >>> order, private = peel(cells, *count_cells(cells, 4))
    >>> order.tolist(), private.tolist()
    ([0, 1], [2, 3])
    """
    return _peel_kernel(cells, counts.copy(), key_xor.copy())


@numba.njit(cache=True)
def _assign_kernel(cells, masks, values, order, private, table):
    for i in range(order.size - 1, -1, -1):
        key = order[i]
        # table[private[i]] is still 0 here, so XOR-ing all three cells is the same as the other two.
        acc = values[key] ^ masks[key]
        for j in range(cells.shape[1]):
            acc ^= table[cells[key, j]]
        table[private[i]] = acc
    return table


def assign_in_reverse(
    cells: np.ndarray, masks: np.ndarray, values: np.ndarray, order: np.ndarray, private: np.ndarray, m: int, t: int
) -> np.ndarray:
    """Fill the table so that ``values[i] == masks[i] ^ X[cells[i, 0]] ^ X[cells[i, 1]] ^ X[cells[i, 2]]``.

    Parameters
    ----------
    cells : numpy.ndarray of int64, shape (n, 3)
    masks : numpy.ndarray of uint16, shape (n,)
        t-bit masks of the keys.
    values : numpy.ndarray of uint16, shape (n,)
        Values to store, each below ``2**t``.
    order, private : numpy.ndarray of int64, shape (n,)
        A complete peeling from :func:`peel`.
    m, t : int
        Table cells and bits per cell.

    Returns
    -------
    numpy.ndarray of uint8 or uint16, shape (m,)
        The table ``X``; cells no key owns stay 0.

    Examples
    --------
    >>> cells = np.array([[0, 1, 2], [0, 1, 3]])
    >>> order, private = peel(cells, *count_cells(cells, 4))
    >>> masks, values = np.array([5, 0], np.uint16), np.array([1, 2], np.uint16)
    >>> assign_in_reverse(cells, masks, values, order, private, 4, 3).tolist()
    [0, 0, 4, 2]
    """
    table = np.zeros(m, dtype=_cell_dtype(t))
    dtype = table.dtype.type
    return _assign_kernel(cells, masks.astype(dtype), values.astype(dtype), order, private, table)


def pack_cells(cells: np.ndarray, t: int) -> bytes:
    """Bit-pack cells at exactly ``t`` bits each, least significant bit first.

    Cell ``i`` occupies bits ``i*t .. i*t + t - 1`` of the stream, where stream bit ``b`` is bit
    ``b % 8`` of byte ``b // 8``; the stream is ``ceil(m * t / 8)`` bytes and the unused high
    bits of the last byte are 0.

    Parameters
    ----------
    cells : numpy.ndarray of unsigned ints, shape (m,)
        Values below ``2**t``.
    t : int
        Bits per cell, 1..16.

    Returns
    -------
    bytes

    Examples
    --------
    >>> pack_cells(np.array([1, 2, 3], np.uint8), 3).hex()  # 001 010 011 -> bits 100 010 110
    'd100'
    """
    shifts = np.arange(t, dtype=np.uint16)
    bits = ((cells.astype(np.uint16)[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bits.reshape(-1), bitorder="little").tobytes()


def unpack_cells(data: bytes, m: int, t: int) -> np.ndarray:
    """Inverse of :func:`pack_cells`, checking the length and the padding bits first.

    Parameters
    ----------
    data : bytes
        ``ceil(m * t / 8)`` bytes.
    m, t : int
        Number of cells and bits per cell (1..16).

    Returns
    -------
    numpy.ndarray of uint8 (t <= 8) or uint16, shape (m,)

    Raises
    ------
    CorruptFileError
        If ``data`` has the wrong length or non-zero padding bits.

    Examples
    --------
    >>> unpack_cells(bytes.fromhex("d100"), 3, 3).tolist()
    [1, 2, 3]
    """
    nbits = m * t
    expected = (nbits + 7) // 8
    if len(data) != expected:
        raise CorruptFileError(f"Bloomier table holds {len(data)} bytes; {m} cells of {t} bits need {expected}")
    tail_bits = nbits % 8
    if tail_bits and data[-1] >> tail_bits:
        raise CorruptFileError("Bloomier table has non-zero padding bits after its last cell")
    # Every cell lies inside a 24-bit window starting at its first byte (offset <= 7, t <= 16).
    padded = np.frombuffer(bytes(data) + b"\x00\x00", dtype=np.uint8)
    start = np.arange(m, dtype=np.int64) * t
    first = start >> 3
    window = (
        padded[first].astype(np.uint32)
        | (padded[first + 1].astype(np.uint32) << 8)
        | (padded[first + 2].astype(np.uint32) << 16)
    )
    cells = (window >> (start & 7).astype(np.uint32)) & np.uint32((1 << t) - 1)
    return cells.astype(_cell_dtype(t))


# ----------------------------------------------------------------------------- build


def _check_build_inputs(keys, values, t, seed, ratio, max_tries) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The shared checks (:func:`~weightcodec.codecs.retrieval.check_build_args`) plus ratio and max_tries."""
    problems = []
    if not (isinstance(ratio, (int, float, np.number)) and math.isfinite(ratio) and ratio >= 1.0):
        problems.append(f"ratio={ratio!r} (expected a number >= 1; 1.23 peels reliably)")
    if not (is_int(max_tries) and max_tries >= 1):
        problems.append(f"max_tries={max_tries!r} (expected an int >= 1)")
    return check_build_args(keys, values, t, seed, structure="Bloomier filter", problems=problems)


def bloomier_build(
    keys: np.ndarray,
    values: np.ndarray,
    *,
    t: int,
    seed: int = 0,
    ratio: float = DEFAULT_RATIO,
    max_tries: int = MAX_TRIES,
) -> BloomierTable:
    """Build a Bloomier filter mapping each key to its value.

    Tries the seeds ``seed, seed + 1, ...`` (mod ``2**64``) in turn; each try hashes the keys
    (:func:`~weightcodec.codecs.hashing.hash_positions`), counts cells (:func:`count_cells`)
    and peels (:func:`peel`); the first complete peel is assigned (:func:`assign_in_reverse`).

    Parameters
    ----------
    keys : numpy.ndarray of int, shape (n,)
        Unique positions, ``0 <= key < 2**62``, any order: the table depends on the set only.
    values : numpy.ndarray of int, shape (n,)
        Values to store, ``0 <= value < 2**t``.
    t : int
        Bits per cell, 1..16.
    seed : int, optional
        First hash seed to try, ``0 <= seed < 2**64``.
    ratio : float, optional
        Cells per key (see :func:`bloomier_size`); at least 1, reliably peels from 1.23 up.
    max_tries : int, optional
        Seeds to try before giving up.

    Returns
    -------
    BloomierTable
        With ``m == bloomier_size(n, ratio)`` cells and the winning seed.

    Raises
    ------
    EncodeError
        On bad arguments (all listed, see :func:`~weightcodec.codecs.retrieval.check_build_args`),
        or when no seed of the sequence peels (ratio too small).

    Examples
    --------
    >>> table = bloomier_build(np.array([3, 10, 42]), np.array([0, 1, 2]), t=4, seed=7)
    >>> table.m, table.seed, bloomier_query(table, np.array([3, 10, 42])).tolist()
    (36, 7, [0, 1, 2])
    """
    keys, values, t, seed = _check_build_inputs(keys, values, t, seed, ratio, max_tries)
    n = keys.size
    m = bloomier_size(n, ratio)
    if m // K_HASHES > MAX_SEGMENT:
        raise EncodeError(f"{n} keys need {m} cells; a table holds at most {K_HASHES * MAX_SEGMENT}")
    if n == 0:
        return BloomierTable(np.zeros(0, dtype=_cell_dtype(t)), t, seed)
    for attempt in range(max_tries):
        trial_seed = (seed + attempt) % 2**64
        cells, masks = hash_positions(keys, trial_seed, m // K_HASHES, t)
        order, private = peel(cells, *count_cells(cells, m))
        if order.size == n:
            return BloomierTable(assign_in_reverse(cells, masks, values, order, private, m, t), t, trial_seed)
    raise EncodeError(
        f"could not build a Bloomier filter for {n} keys in {m} cells (ratio {ratio}): no seed of "
        f"{seed}..{seed + max_tries - 1} peels; use ratio >= {DEFAULT_RATIO} or another seed"
    )


# ----------------------------------------------------------------------------- query


def _kernel_args(table: BloomierTable):
    """Cells, key, segment and t as the kernels want them; an empty table reads as all-zero cells."""
    cells = table.cells if table.m else np.zeros(K_HASHES, dtype=table.cells.dtype)
    return cells, seed_key(table.seed), np.uint64(cells.size // K_HASHES), np.uint64(table.t)


@numba.njit(parallel=True, cache=True)
def _query_kernel(cells, key, segment, t, positions, out):
    size = positions.size
    for chunk in numba.prange((size + _CHUNK - 1) // _CHUNK):
        for i in range(chunk * _CHUNK, min((chunk + 1) * _CHUNK, size)):
            c0, c1, c2, mask = cells_and_mask_jit(np.uint64(positions[i]), key, segment, t)
            out[i] = mask ^ cells[c0] ^ cells[c1] ^ cells[c2]
    return out


@numba.njit(parallel=True, cache=True)
def _decode_kernel(cells, key, segment, t, lut, out):
    size = out.size
    for chunk in numba.prange((size + _CHUNK - 1) // _CHUNK):
        for p in range(chunk * _CHUNK, min((chunk + 1) * _CHUNK, size)):
            c0, c1, c2, mask = cells_and_mask_jit(np.uint64(p), key, segment, t)
            out[p] = lut[mask ^ cells[c0] ^ cells[c1] ^ cells[c2]]
    return out


def bloomier_query(table: BloomierTable, positions: np.ndarray) -> np.ndarray:
    """Value of each position: ``M(p) ^ X[h0(p)] ^ X[h1(p)] ^ X[h2(p)]``.

    Stored keys give exactly their value; any other position gives a value uniform on
    ``[0, 2**t)``. Runs in parallel over chunks of 65,536 positions and allocates nothing
    but the result (and an int64 copy of ``positions`` if they are not contiguous int64).

    Parameters
    ----------
    table : BloomierTable
    positions : numpy.ndarray of int, shape (q,)
        Non-negative positions.

    Returns
    -------
    numpy.ndarray of uint16, shape (q,)

    Examples
    --------
    >>> table = bloomier_build(np.array([5]), np.array([9]), t=4)
    >>> int(bloomier_query(table, np.array([5]))[0])
    9
    """
    positions = np.ascontiguousarray(positions, dtype=np.int64).reshape(-1)
    out = np.empty(positions.size, dtype=np.uint16)
    return _query_kernel(*_kernel_args(table), positions, out)


def bloomier_decode_layer(table: BloomierTable, lut: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """Query every position ``0..size-1`` and map each value through ``lut``, in one pass.

    This is the layer decoder: with ``lut[v] = centroid[v]`` for stored codes and 0 above
    them it writes the dense weights directly, without materialising positions or codes.

    Parameters
    ----------
    table : BloomierTable
    lut : numpy.ndarray of float32, shape (2**t,)
        Output for each possible value.
    size : int
        Positions to decode.
    out : numpy.ndarray of float32, shape (size,), optional
        Where to write them (see :func:`~weightcodec.codecs.retrieval.output_array`); default a new array.

    Returns
    -------
    numpy.ndarray of float32, shape (size,)
        ``out``, or the new array.

    Examples
    --------
    >>> table = bloomier_build(np.array([1]), np.array([0]), t=8)
    >>> lut = np.zeros(256, np.float32); lut[0] = 0.5
    >>> float(bloomier_decode_layer(table, lut, 3)[1])
    0.5
    """
    lut = np.ascontiguousarray(lut, dtype=np.float32)
    if lut.size != 2**table.t:
        raise ValueError(f"lut has {lut.size} entries; t={table.t} needs {2**table.t}")
    return _decode_kernel(*_kernel_args(table), lut, output_array(size, out))
