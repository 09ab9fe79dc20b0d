"""Checks and figures the clustered codecs share (:mod:`~weightcodec.codecs.deep`, :mod:`~weightcodec.codecs.weightless`).

Both store a pruned, clustered float32 layer as a codebook of ``K`` float32 centroids plus
their own sections, keep small integers in ``meta``, and report their size against a lower
bound for ``inspect``. The checks are the same words for both, so they live here, once:

* :func:`check_float32_array`: the encoder's input, flat, float32 and finite;
* :func:`check_sections`, :func:`meta_int`, :func:`meta_str`: a stored tensor's structure;
* :func:`read_codebook`: finite, non-zero, strictly ascending centroids;
* :func:`size_figures`: the ``describe`` figures every clustered codec reports.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..errors import CorruptFileError, EncodeError

__all__ = [
    "BITS_PER_BYTE",
    "CENTROID_DTYPE",
    "check_float32_array",
    "check_sections",
    "meta_int",
    "meta_str",
    "read_codebook",
    "size_figures",
    "per",
]

BITS_PER_BYTE = 8
CENTROID_DTYPE = np.dtype("<f4")  # centroids are stored little-endian float32


def check_float32_array(array: np.ndarray, codec: str) -> np.ndarray:
    """The array as flat little-endian float32, after checking its dtype and that it is finite.

    Raises
    ------
    EncodeError
        For a dtype other than float32 (the fix: ``.astype(np.float32)``), or NaN or infinite
        values (how many, and the first one's flat index).

    Examples
    --------
    >>> check_float32_array(np.eye(2, dtype=np.float32), "deep").tolist()
    [1.0, 0.0, 0.0, 1.0]
    """
    array = np.asarray(array)
    if array.dtype.kind != "f" or array.dtype.itemsize != 4:
        raise EncodeError(
            f"{codec} codec encodes float32 arrays, got {array.dtype}; convert with .astype(np.float32) first"
        )
    values = np.ascontiguousarray(array, dtype=CENTROID_DTYPE).reshape(-1)
    bad = ~np.isfinite(values)
    if bad.any():
        n_nan, n_inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
        raise EncodeError(
            f"{codec} codec needs finite values; array holds {n_nan} NaN and {n_inf} infinite values "
            f"(first at flat index {int(np.argmax(bad))})"
        )
    return values


def check_sections(sections: Mapping[str, bytes], expected: tuple[str, ...], codec: str) -> None:
    """Refuse a stored tensor whose section names are not exactly ``expected``."""
    if sorted(sections) != sorted(expected):
        raise CorruptFileError(f"{codec} tensor has sections {sorted(sections)}; expected {list(expected)}")


def meta_int(meta: Mapping, key: str, low: int, high: int, codec: str) -> int:
    """``meta[key]`` after checking it is an int (not a bool) in ``low..high``.

    Examples
    --------
    >>> meta_int({"t": 8}, "t", 1, 16, "weightless")
    8
    """
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CorruptFileError(f"{codec} tensor meta {key!r} is {_short(value)}; expected an int in {low}..{high}")
    return value


def meta_str(meta: Mapping, key: str, codec: str) -> str:
    """``meta[key]`` after checking it is a string."""
    value = meta.get(key)
    if not isinstance(value, str):
        raise CorruptFileError(f"{codec} tensor meta {key!r} must be a string, got {_short(value)}")
    return value


def read_codebook(data: bytes, max_clusters: int, codec: str) -> np.ndarray:
    """The stored centroids as float32, checked: at most ``max_clusters``, finite, non-zero, ascending.

    Examples
    --------
    >>> read_codebook(np.array([-1, 2], "<f4").tobytes(), 256, "deep").tolist()
    [-1.0, 2.0]
    """
    if len(data) % CENTROID_DTYPE.itemsize or len(data) > max_clusters * CENTROID_DTYPE.itemsize:
        raise CorruptFileError(
            f"{codec} codebook is {len(data)} bytes; expected a multiple of {CENTROID_DTYPE.itemsize}, "
            f"at most {max_clusters * CENTROID_DTYPE.itemsize}"
        )
    codebook = np.frombuffer(data, dtype=CENTROID_DTYPE).astype(np.float32)
    if not np.all(np.isfinite(codebook)) or np.any(codebook == 0) or np.any(np.diff(codebook) <= 0):
        raise CorruptFileError(f"{codec} codebook must hold finite, non-zero, strictly ascending centroids")
    return codebook


def size_figures(sections: Mapping[str, bytes], names: tuple[str, ...], bound: float | None, nonzero: int | None) -> dict:
    """The size figures of a ``describe``: bytes against the lower bound ``bound``.

    Returns
    -------
    dict
        ``bits_per_nonzero`` (all sections), ``bytes``, ``section_bytes`` (in ``names``
        order), ``bound_bytes`` and ``overhead_percent`` (``bytes`` over ``bound_bytes``, 0
        when both are 0); a figure that needs an unknown ``bound`` or ``nonzero`` is None.

    Examples
    --------
    >>> size_figures({"codebook": b"1234", "table": b"12"}, ("codebook", "table"), 5.0, 2)["overhead_percent"]
    20.0
    """
    section_bytes = {name: len(sections[name]) for name in names}
    total = sum(section_bytes.values())
    return {
        "bits_per_nonzero": None if nonzero is None else per(BITS_PER_BYTE * total, nonzero),
        "bytes": total,
        "section_bytes": section_bytes,
        "bound_bytes": bound,
        "overhead_percent": None if bound is None else per(100.0 * (total - bound), bound),
    }


def per(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, or 0.0 when there is nothing to divide by."""
    return numerator / denominator if denominator else 0.0


def _short(value) -> str:
    """``repr(value)`` cut to a readable length (a hostile meta may hold a huge value)."""
    text = repr(value) if not isinstance(value, int) or value.bit_length() < 64 else f"an int of {value.bit_length()} bits"
    return text if len(text) <= 60 else text[:57] + "..."
