"""Platform-stable hashing of weight positions for retrieval structures (Bloomier filter, ribbon).

A key is a linear weight position ``p`` (C order, ``0 <= p < 2**40``). Everything a filter
needs from a key comes from two 64-bit words computed with the *splitmix64* finaliser
(Steele, Lea & Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014; the
constants are Stafford's "Mix13" variant, as in Vigna's ``splitmix64.c``)::

    mix64(z):  z ^= z >> 30;  z *= 0xBF58476D1CE4E5B9
               z ^= z >> 27;  z *= 0x94D049BB133111EB
               z ^= z >> 31                                (all mod 2**64)

    key  = mix64(seed + GAMMA)              GAMMA = 0x9E3779B97F4A7C15 (2**64 / golden ratio)
    h1   = mix64(p XOR key)
    h2   = mix64(h1 + GAMMA)

``mix64`` is a bijection of 64-bit words with full avalanche, so distinct positions give
distinct ``h1`` and each output bit depends on every input bit. The words are cut into
disjoint bit fields, so the three cell indices and the mask never share a bit::

    h1: [ bits 63..32 -> cell 1 ][ bits 31..0 -> cell 0 ]
    h2: [ bits 63..64-t -> mask ] ...  [ bits 31..0 -> cell 2 ]

Cell ``j`` lies in segment ``j`` of a table of ``3 * L`` cells:
``cell_j = j * L + fastrange32(u_j, L)`` with ``fastrange32(u, L) = (u * L) >> 32``
(Lemire, "A fast alternative to the modulo reduction", 2016). The product of two values
below ``2**32`` fits in 64 bits, so no 128-bit multiply is needed, and unlike ``u % L``
there is no division and the bias is at most one part in ``2**32 / L``. Disjoint segments
make the three cells of a key distinct, which XOR needs: a repeated cell would cancel.

Everything is unsigned 64-bit arithmetic that wraps, which NumPy and numba both implement
identically on every platform: the same positions and seed give the same cells everywhere.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = [
    "GAMMA",
    "K_HASHES",
    "MAX_SEGMENT",
    "MAX_T",
    "mix64",
    "mix64_jit",
    "seed_key",
    "hash_positions",
    "cells_and_mask_jit",
]

GAMMA = np.uint64(0x9E3779B97F4A7C15)  # Weyl increment of splitmix64: odd, 2**64 / golden ratio
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)  # Stafford Mix13 multipliers, chosen for avalanche
_MUL2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)
_BITS64 = np.uint64(64)

K_HASHES = 3  # cells per key; one per segment
MAX_SEGMENT = 2**32  # fastrange32 maps a 32-bit word onto [0, L) only for L <= 2**32
MAX_T = 16  # cells and masks are at most 16 bits; the mask field (bits 48..63) stays clear of cell 2's


def mix64(z):
    """The splitmix64 finaliser: a bijective 64-bit mixer with full avalanche.

    Works elementwise on NumPy ``uint64`` arrays (the multiplies wrap modulo ``2**64``) and,
    through :data:`mix64_jit`, on ``uint64`` scalars inside numba code.

    Parameters
    ----------
    z : numpy.ndarray of uint64
        Words to mix.

    Returns
    -------
    numpy.ndarray of uint64
        Mixed words, same shape.

    Examples
    --------
    >>> hex(int(mix64(np.array([0], dtype=np.uint64))[0]))
    '0x0'
    >>> hex(int(mix64(np.array([GAMMA], dtype=np.uint64))[0]))
    '0xe220a8397b1dcdaf'
    """
    z = (z ^ (z >> _S30)) * _MUL1
    z = (z ^ (z >> _S27)) * _MUL2
    return z ^ (z >> _S31)


mix64_jit = numba.njit(mix64, cache=True)


def seed_key(seed: int) -> np.uint64:
    """The 64-bit word XORed into every position for hash seed ``seed`` (``0 <= seed < 2**64``).

    Examples
    --------
    >>> hex(int(seed_key(0)))  # the first output of splitmix64 seeded with 0
    '0xe220a8397b1dcdaf'
    """
    word = np.array([(int(seed) + int(GAMMA)) % 2**64], dtype=np.uint64)
    return np.uint64(mix64(word)[0])


def hash_positions(positions: np.ndarray, seed: int, segment: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell indices and masks of many positions at once (vectorized NumPy).

    Parameters
    ----------
    positions : numpy.ndarray of int64, shape (n,)
        Linear weight positions, ``0 <= p < 2**63``.
    seed : int
        Hash seed, ``0 <= seed < 2**64``.
    segment : int
        Segment length ``L``, ``1 <= L <= 2**32``; the table has ``3 * L`` cells.
    t : int
        Mask width in bits, ``1 <= t <= 16``.

    Returns
    -------
    cells : numpy.ndarray of int64, shape (n, 3)
        ``cells[i, j]`` lies in ``[j * L, (j + 1) * L)``.
    masks : numpy.ndarray of uint16, shape (n,)
        The t-bit masks.

    Examples
    --------
    >>> cells, masks = hash_positions(np.arange(4), seed=0, segment=10, t=8)
    >>> bool(((cells >= [0, 10, 20]) & (cells < [10, 20, 30])).all()), masks.dtype
    (True, dtype('uint16'))
    """
    h1 = mix64(np.asarray(positions, dtype=np.int64).astype(np.uint64) ^ seed_key(seed))
    h2 = mix64(h1 + GAMMA)
    seg = np.uint64(segment)
    cells = np.empty((h1.size, K_HASHES), dtype=np.int64)
    cells[:, 0] = ((h1 & _LOW32) * seg) >> _S32
    cells[:, 1] = (((h1 >> _S32) * seg) >> _S32) + seg
    cells[:, 2] = (((h2 & _LOW32) * seg) >> _S32) + seg * np.uint64(2)
    masks = (h2 >> (_BITS64 - np.uint64(t))).astype(np.uint16)
    return cells, masks


@numba.njit(cache=True, inline="always")
def cells_and_mask_jit(position, key, segment, t):
    """Numba twin of :func:`hash_positions` for one position (all arguments ``uint64``).

    Returns ``(cell0, cell1, cell2, mask)`` as ``uint64``; used inside query kernels.
    """
    h1 = mix64_jit(position ^ key)
    h2 = mix64_jit(h1 + GAMMA)
    c0 = ((h1 & _LOW32) * segment) >> _S32
    c1 = (((h1 >> _S32) * segment) >> _S32) + segment
    c2 = (((h2 & _LOW32) * segment) >> _S32) + segment + segment
    return c0, c1, c2, h2 >> (_BITS64 - t)
