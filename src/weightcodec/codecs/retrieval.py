"""The build contract every retrieval structure shares: which keys, values, t and seed it takes.

A retrieval structure (:mod:`~weightcodec.codecs.bloomier`, :mod:`~weightcodec.codecs.fuse`,
:mod:`~weightcodec.codecs.ribbon`) stores a static function from keys, the linear positions
of non-zero weights, to t-bit values, their cluster codes. All three accept exactly the same
arguments, so they check them here, in one place, and refuse bad ones with the same words::

    keys    1-D integer array, unique, each in 0 .. MAX_KEY - 1
    values  integer array of the keys' shape, each in 0 .. 2**t - 1
    t       int, 1 .. 16                        (bits per value; masks and cells are uint16)
    seed    int, 0 .. 2**64 - 1                 (first hash seed of the retry sequence)

Keys come back in ascending order (values reordered with them): a table then depends on the
key *set* only, not on the order the caller listed it in. Each one's layer decoder writes a
whole layer, into a new array or the caller's (:func:`output_array`).
"""

from __future__ import annotations

import mmap
from typing import Iterable

import numpy as np

from ..errors import EncodeError
from .hashing import MAX_T

__all__ = ["MAX_KEY", "MAX_SEED", "check_build_args", "is_int", "output_array"]

# Positions are int64 >= 0. 2**62 is far above any layer (the container caps a tensor at
# 2**40 elements) and keeps every key, and key + 1, clear of int64 overflow.
MAX_KEY = 1 << 62
MAX_SEED = 2**64 - 1  # seeds are uint64 words (hashing.seed_key)
_SHOWN = 5  # offending keys or values quoted in an error message
# From this size on, a new layer is allocated in small pages (see output_array): 64 MiB, far above
# the layers whose allocation time is noise
_SMALL_PAGES_FROM = 64 << 20


def is_int(value) -> bool:
    """Whether ``value`` is a Python or NumPy integer (``bool`` is not one here)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_build_args(
    keys, values, t, seed, *, structure: str, problems: Iterable[str] = ()
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Check a retrieval build's arguments; return them in canonical form.

    Parameters
    ----------
    keys : array_like of int, shape (n,)
        Unique positions, ``0 <= key < MAX_KEY``, any order.
    values : array_like of int, shape (n,)
        ``0 <= value < 2**t``.
    t : int
        Bits per value, 1..16.
    seed : int
        ``0 <= seed < 2**64``.
    structure : str
        What is being built, for the message (``"Bloomier filter"``).
    problems : iterable of str, optional
        The caller's findings about its own further arguments (``"ratio=0.9 (expected ...)"``),
        reported together with these.

    Returns
    -------
    keys : numpy.ndarray of int64, shape (n,)
        Ascending.
    values : numpy.ndarray of uint16, shape (n,)
        In the order of the returned keys.
    t, seed : int

    Raises
    ------
    EncodeError
        ``"cannot build a <structure>: "`` followed by every problem found, separated by
        ``"; "``: a ``t`` or ``seed`` that is not an int in range (the value received and the
        expected range), keys that are not a 1-D integer array, values that are not integers
        of the keys' shape, and then how many keys lie out of range, values do not fit in
        ``t`` bits, keys repeat, each with up to five examples.

    Examples
    --------
    >>> keys, values, t, seed = check_build_args([9, 2], [1, 0], 4, 0, structure="table")
    >>> keys.tolist(), values.tolist()
    ([2, 9], [0, 1])
    >>> check_build_args([2, 2], [0, 16], 4, -1, structure="table")
    Traceback (most recent call last):
    ...
    weightcodec.errors.EncodeError: cannot build a table: seed=-1 (expected an int in 0..2**64-1); \
1 values outside 0..15 for t=4, e.g. [16] (raise t); 1 keys repeat, e.g. [2] (keys must be unique)
    """
    t_ok = is_int(t) and 1 <= t <= MAX_T
    found = [] if t_ok else [f"t={t!r} (expected an int in 1..{MAX_T})"]
    if not (is_int(seed) and 0 <= seed <= MAX_SEED):
        found.append(f"seed={seed!r} (expected an int in 0..2**64-1)")
    found += problems
    keys, values = np.asarray(keys), np.asarray(values)
    if keys.ndim != 1 or keys.dtype.kind not in "iu":
        found.append(f"keys of shape {keys.shape} and dtype {keys.dtype} (expected a 1-D integer array)")
    elif values.shape != keys.shape or values.dtype.kind not in "iu":
        found.append(f"values of shape {values.shape} and dtype {values.dtype} (expected integers, shape {keys.shape})")
    else:
        # compared and sorted in their own dtype: a uint64 key >= 2**63 must not wrap to a negative int64
        bad_keys = keys[(keys < 0) | (keys >= MAX_KEY)]
        if bad_keys.size:
            found.append(f"{bad_keys.size} keys outside 0..2**62-1, e.g. {bad_keys[:_SHOWN].tolist()}")
        if t_ok:
            bad_values = values[(values < 0) | (values >= 2**t)]
            if bad_values.size:
                found.append(
                    f"{bad_values.size} values outside 0..{2**t - 1} for t={t}, e.g. {bad_values[:_SHOWN].tolist()} "
                    "(raise t)"
                )
        if keys.size > 1 and not np.all(keys[1:] > keys[:-1]):
            order = np.argsort(keys, kind="stable")
            keys, values = keys[order], values[order]
            repeated = np.unique(keys[1:][keys[1:] == keys[:-1]])
            if repeated.size:
                found.append(f"{repeated.size} keys repeat, e.g. {repeated[:_SHOWN].tolist()} (keys must be unique)")
    if found:
        raise EncodeError(f"cannot build a {structure}: " + "; ".join(found))
    return keys.astype(np.int64), values.astype(np.uint16), int(t), int(seed)


def output_array(size: int, out: np.ndarray | None = None) -> np.ndarray:
    """A new float32 array of ``size`` elements, or ``out`` after checking that it is one.

    A layer decoder writes every element, so a caller can hand it memory that already holds
    the layer's place (a mapped output file): no second array of the layer's size is made.
    A new large array is mapped in small pages, not the transparent huge pages NumPy asks for:
    the decoder writes it once, in order, so huge pages save only page faults, and their first
    touch cost more on the virtual machine the benchmarks ran on (a 411 MB layer's load() in a
    fresh process: 0.87 s against 1.38 s, medians of 10; ``benchmarks/results/decode-cli.md``).

    Raises
    ------
    ValueError
        If ``out`` is not a writable, C-contiguous, one-dimensional float32 array of ``size`` elements.

    Examples
    --------
    >>> output_array(3).shape
    (3,)
    >>> output_array(2, np.zeros(3, np.float32))
    Traceback (most recent call last):
    ValueError: out must be a writable C-contiguous float32 array of 2 elements, got float32 (3,)
    """
    if out is None:
        return _new_layer(int(size))
    flags = out.flags
    if out.dtype != np.float32 or out.shape != (size,) or not flags.c_contiguous or not flags.writeable:
        raise ValueError(
            f"out must be a writable C-contiguous float32 array of {size} elements, got {out.dtype} {out.shape}"
        )
    return out


def _new_layer(size: int) -> np.ndarray:
    """An uninitialised float32 array; from :data:`_SMALL_PAGES_FROM` bytes on, anonymous memory in small pages."""
    if size * 4 < _SMALL_PAGES_FROM:
        return np.empty(size, dtype=np.float32)
    memory = mmap.mmap(-1, size * 4)  # freed when the last array on it goes
    if hasattr(mmap, "MADV_NOHUGEPAGE"):  # Linux
        memory.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(memory, dtype=np.float32)
