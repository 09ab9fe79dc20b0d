"""Relative sparse indices with filler zeros (Han et al., Deep Compression, ICLR 2016, §2).

A pruned layer keeps few non-zero weights. Instead of their absolute positions, Deep
Compression stores the *gap* from one non-zero to the next in a fixed ``b``-bit field, and
when a gap is too large for the field it inserts a *filler*: an extra entry, holding a zero
weight, that only moves the position forward.

Convention (the paper leaves the off-by-one open; this is ours)
----------------------------------------------------------------
Positions are indices into the C-order flattened array. For non-zero positions
``p_0 < p_1 < ...`` and ``p_{-1} = -1``, the gap is ``gap_i = p_i - p_{i-1} >= 1``, and a
``b``-bit field stores ``gap - 1``, in ``[0, 2^b - 1]``: so gaps ``1 .. 2^b`` fit in one
entry, as in the paper's 3-bit example ("when the difference exceeds 8 ... we add a filler
zero"). A gap ``g > 2^b`` is preceded by ``(g - 1) // 2^b`` fillers; each filler stores
``2^b - 1`` (it advances exactly ``2^b`` positions, to a position whose weight is zero), and
the entry after them stores what is left, minus one::

    b = 2 (gaps 1..4 fit)      flat array:  0 1 2 3 4 5 6 7 8 9 10
                                            . A . . . . . . . . B
    A at 1:  gap 2  -> [1]
    B at 10: gap 9  -> filler [3] (lands on 5), filler [3] (lands on 9), then [0] (lands on 10)
    gap symbols: 1 3 3 0     is_filler: F T T F

Decoding is the running sum ``position_j = sum_{i<=j}(symbol_i + 1) - 1``; filler entries
are then dropped. No entry follows the last non-zero: the stream never ends with a filler.
"""

from __future__ import annotations

import numpy as np

from ..errors import EncodeError

__all__ = ["MAX_INDEX_BITS", "gaps_with_fillers", "positions_from_gaps"]

# Gap symbols go to an entropy coder whose alphabet is [0, 2^16): 16-bit fields are the widest.
MAX_INDEX_BITS = 16


def gaps_with_fillers(positions: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Turn sorted non-zero positions into ``index_bits``-bit gap symbols, inserting fillers.

    Parameters
    ----------
    positions : ndarray of int, shape (n,)
        Strictly increasing, non-negative flat (C-order) positions of the non-zero weights.
    index_bits : int
        Width ``b`` of the gap field, 1..16. Each symbol is in ``[0, 2^b - 1]``.

    Returns
    -------
    gap_symbols : ndarray of uint16, shape (n + fillers,)
        ``gap - 1`` for each non-zero entry, ``2^b - 1`` for each filler (uint16: b <= 16, and
        there are often several entries per weight, so the width matters for memory).
    is_filler : ndarray of bool, shape (n + fillers,)
        True where the entry is a filler (a zero weight placed only to bridge a long gap).

    Raises
    ------
    EncodeError
        If ``index_bits`` is out of range or ``positions`` is not strictly increasing from 0.

    Examples
    --------
    >>> gaps, fill = gaps_with_fillers(np.array([1, 10]), 2)
    >>> gaps.tolist(), fill.tolist()
    ([1, 3, 3, 0], [False, True, True, False])
    """
    span = _span(index_bits)
    positions = np.asarray(positions, dtype=np.int64)
    gaps = np.diff(positions, prepend=np.int64(-1))
    if positions.ndim != 1 or np.any(gaps < 1):
        raise EncodeError("positions must be a 1-D, strictly increasing array of non-negative ints")
    fillers = (gaps - 1) // span  # fillers before each non-zero entry
    entry_end = np.cumsum(fillers + 1)  # one past the index of each non-zero entry
    total = int(entry_end[-1]) if entry_end.size else 0
    gap_symbols = np.full(total, span - 1, dtype=np.uint16)
    is_filler = np.ones(total, dtype=bool)
    gap_symbols[entry_end - 1] = gaps - fillers * span - 1
    is_filler[entry_end - 1] = False
    return gap_symbols, is_filler


def positions_from_gaps(gap_symbols: np.ndarray, is_filler: np.ndarray) -> np.ndarray:
    """Inverse of :func:`gaps_with_fillers`: the flat positions of the non-filler entries.

    Parameters
    ----------
    gap_symbols : ndarray of int, shape (m,)
        Stored ``gap - 1`` values (non-negative), fillers included.
    is_filler : ndarray of bool, shape (m,)
        True for filler entries.

    Returns
    -------
    ndarray of int64, shape (m - fillers,)
        Strictly increasing flat positions of the non-zero weights.

    Examples
    --------
    >>> positions_from_gaps(np.array([1, 3, 3, 0]), np.array([False, True, True, False])).tolist()
    [1, 10]
    """
    # int64: m <= 2^40 entries of at most 2^16 each cannot overflow.
    ends = np.cumsum(np.asarray(gap_symbols, dtype=np.int64) + 1) - 1
    return ends[~np.asarray(is_filler, dtype=bool)]


def _span(index_bits: int) -> int:
    """Positions one gap field can advance, ``2^b``, after checking ``b``."""
    if isinstance(index_bits, bool) or not isinstance(index_bits, (int, np.integer)) or not (
        1 <= index_bits <= MAX_INDEX_BITS
    ):
        raise EncodeError(f"index_bits must be an int in 1..{MAX_INDEX_BITS}, got {index_bits!r}")
    return 1 << int(index_bits)
