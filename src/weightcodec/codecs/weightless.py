"""Weightless (Reagen et al., ICML 2018): a pruned, clustered layer stored lossily in a retrieval filter.

The non-zero weights' linear positions (C order) are the keys and their cluster codes the
values of a static function: a bumped ribbon (:mod:`~weightcodec.codecs.ribbon`), the paper's
Bloomier filter (:mod:`~weightcodec.codecs.bloomier`) or a binary fuse table
(:mod:`~weightcodec.codecs.fuse`), chosen with ``filter``; the default, ``"auto"``, builds all
three and keeps the smallest (the meta names the one stored). No position is stored: a layer is
decoded by querying *every* position, and a query returns a t-bit value that is a code below
``K`` (a weight) or anything else (a zero)::

    layer (3 x 4)         keys = non-zero positions   values = codes      codebook
    [ 0  .7  0   0 ]      1, 7, 8                      1, 0, 1             [-.2, .7]
    [ 0   0  0 -.2 ]  ->                            -> filter of about 1.01 n t bits (ribbon)
    [.7   0  0   0 ]
    decode: for every position p, v = query(p); weight = codebook[v] if v < K else 0

Stored weights come back exactly; each zero position comes back non-zero (a false positive,
set to a uniformly random centroid) with probability ``K / 2**t``. Weightless retrains the
layers after an encoded one to absorb them. The cost does not depend on how sparse the layer
is: about ``1.003 * t`` to ``1.015 * t`` bits per non-zero for the ribbon from about a thousand
non-zeros up (below that its fixed ~30-byte header and minimum size make the Bloomier filter's
``1.23 * t`` bits + 32 cells smaller, and the fuse table smaller still on a handful of
non-zeros), ``1.13 * t`` to ``1.25 * t`` for the fuse layout (``benchmarks/results/retrieval.md``);
``"auto"`` is never larger than any of them. Byte layouts: ``docs/codecs/weightless.md``.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, NamedTuple

import numpy as np

from ..errors import CorruptFileError, EncodeError, FormatError
from .base import Encoded
from .common import (
    BITS_PER_BYTE,
    CENTROID_DTYPE,
    check_float32_array,
    check_sections,
    meta_int,
    meta_str,
    per,
    read_codebook,
    size_figures,
)
from .bloomier import (
    DEFAULT_RATIO,
    BloomierTable,
    bloomier_build,
    bloomier_decode_layer,
    bloomier_size,
    pack_cells,
    unpack_cells,
)
from .fuse import fuse_filter_build, fuse_filter_decode, fuse_layout
from .hashing import K_HASHES, MAX_SEGMENT, MAX_T
from .retrieval import MAX_SEED, output_array
from .ribbon import ribbon_filter_build, ribbon_filter_decode

__all__ = [
    "NAME",
    "Filter",
    "FILTERS",
    "AUTO_FILTER",
    "FILTER_CHOICES",
    "DEFAULT_FILTER",
    "encode",
    "decode",
    "decode_into",
    "describe",
    "expected_false_positives",
    "smallest_t",
    "measured_false_positives",
]

NAME = "weightless"
SECTIONS = ("codebook", "table")


class Filter(NamedTuple):
    """A retrieval structure the weightless codec can store its codes in.

    ``build(keys, codes, *, t, seed, ratio) -> (params, table)`` stores ``codes`` (ints below
    ``2**t``) under ``keys`` (unique ascending int64 positions) and returns the JSON-able
    parameters it needs to read the table back (merged into the tensor's meta) and the
    ``table`` section bytes; it must be deterministic. ``decode(meta, table, lut, out)``
    queries positions ``0..out.size-1`` and writes float32 ``lut[value]`` for each into
    ``out`` (flat float32, see :func:`~weightcodec.codecs.retrieval.output_array`), raising
    :class:`~weightcodec.errors.CorruptFileError` for parameters or bytes it cannot trust.
    ``floor(n, t, ratio)``, if given, is a lower bound of the table bytes for ``n`` keys:
    ``"auto"`` does not build a filter whose floor is no smaller than the best table so far.
    """

    build: Callable[..., tuple[dict, bytes]]
    decode: Callable[[Mapping, bytes, np.ndarray, np.ndarray], np.ndarray]
    floor: Callable[[int, int, float], int] | None = None


def _bloomier_build(keys: np.ndarray, codes: np.ndarray, *, t: int, seed: int, ratio: float) -> tuple[dict, bytes]:
    table = bloomier_build(keys, codes, t=t, seed=seed, ratio=ratio)
    return {"m": table.m, "k": K_HASHES, "seed": table.seed}, pack_cells(table.cells, t)


def _bloomier_decode(meta: Mapping, table: bytes, lut: np.ndarray, out: np.ndarray) -> np.ndarray:
    t, n = meta["t"], meta["n"]
    meta_int(meta, "k", K_HASHES, K_HASHES, NAME)
    m = meta_int(meta, "m", 0, K_HASHES * MAX_SEGMENT, NAME)
    seed = meta_int(meta, "seed", 0, MAX_SEED, NAME)
    if m % K_HASHES or m < n or (m == 0) != (n == 0):
        raise CorruptFileError(
            f"weightless tensor has m={m} cells for n={n} keys; expected 0 for 0 keys, else a multiple of 3 >= n"
        )
    return bloomier_decode_layer(BloomierTable(unpack_cells(table, m, t), t, seed), lut, out.size, out)


def _cells_floor(cells: int, t: int) -> int:
    return -(-cells * t // BITS_PER_BYTE)


FILTERS: dict[str, Filter] = {
    # exactly bloomier_size(n, ratio) cells whatever the seed
    "bloomier": Filter(_bloomier_build, _bloomier_decode, lambda n, t, ratio: _cells_floor(bloomier_size(n, ratio), t)),
    # fuse_layout(n) cells, or more after failed tries
    "fuse": Filter(fuse_filter_build, fuse_filter_decode, lambda n, t, ratio: _cells_floor(fuse_layout(n)[1], t)),
    "ribbon": Filter(ribbon_filter_build, ribbon_filter_decode),  # bumped ribbon, docs/codecs/ribbon.md
}
# "auto" is an encoder choice, never stored: build these in this order, keep the smallest table
# (the first on a tie). The ribbon is the smallest on the layers that dominate a model's size
# (benchmarks/results/retrieval.md: 1.003-1.014 t bits per non-zero against Bloomier's 1.23 t)
# but its ~30-byte header and 128-row minimum lose to the Bloomier filter below ~900 non-zeros
# and to the fuse table on a handful. On a large layer the others' floors (their fixed cell
# counts) rule them out without a build, so "auto" costs little more than the ribbon there.
AUTO_FILTER = "auto"
AUTO_ORDER = ("ribbon", "bloomier", "fuse")
FILTER_CHOICES = (AUTO_FILTER, *sorted(FILTERS))
DEFAULT_FILTER = AUTO_FILTER


def encode(
    array: np.ndarray, *, t: int, seed: int = 0, ratio: float = DEFAULT_RATIO, filter: str = DEFAULT_FILTER
) -> Encoded:
    """Store a pruned, clustered float32 array in a retrieval filter of t-bit cells.

    Parameters
    ----------
    array : ndarray of float32, any shape
        Finite values; zeros (either sign) are pruned weights, the ``K`` distinct non-zero
        values are the centroids, ``K <= 2**t``. Read in C order.
    t : int
        Bits per cell, 1..16; a zero decodes non-zero with probability ``K / 2**t``.
    seed : int, optional
        First hash seed tried, ``0 <= seed < 2**64``; the one that builds is stored.
    ratio : float, optional
        Bloomier filter cells per non-zero (1.23 peels reliably); the ribbon and fuse layouts
        size themselves and ignore it.
    filter : str, optional
        Retrieval structure, a key of :data:`FILTERS` (``"bloomier"`` is the paper's), or
        ``"auto"`` (the default): build the ribbon, the Bloomier filter and the fuse table and
        keep the one with the smallest table, the first of that order on a tie (the ribbon from
        about a thousand non-zeros up, the Bloomier filter or fuse table below). A filter that
        cannot be built is passed over unless none can.

    Returns
    -------
    Encoded
        Sections ``codebook`` (K float32, ascending) and ``table``; ``meta`` holds
        ``filter`` (the structure stored, never ``"auto"``), ``t``, ``K``, ``n`` (non-zeros) and
        the filter's own parameters (ribbon: ``seed``, ``m`` rows; Bloomier: ``m`` cells, ``k``,
        ``seed``; fuse: ``m``, ``segment``, ``seed``). Equal input and seed give equal bytes.

    Raises
    ------
    EncodeError
        For a non-float32 array, NaN or infinite values, ``t`` outside 1..16 or too small for
        ``K``, an unknown filter, or a filter that cannot be built.

    Examples
    --------
    >>> w = np.array([[0, 0.5, 0], [0, 0, -0.25]], dtype=np.float32)
    >>> e = encode(w, t=8, filter="ribbon")
    >>> e.meta
    {'filter': 'ribbon', 't': 8, 'K': 2, 'n': 2, 'seed': 0, 'm': 128}
    >>> decode(e.meta, e.sections, w.shape)[w != 0].tolist()
    [0.5, -0.25]
    >>> encode(w, t=8, filter="bloomier").meta
    {'filter': 'bloomier', 't': 8, 'K': 2, 'n': 2, 'm': 36, 'k': 3, 'seed': 0}
    >>> encode(w, t=8).meta["filter"]  # "auto": two keys fit the fuse table's few cells best
    'fuse'
    """
    names = AUTO_ORDER if filter == AUTO_FILTER else (filter,)
    candidates = [(name, _filter(name, EncodeError)) for name in names]
    t = _check_t(t)
    values = check_float32_array(array, NAME)
    keys = np.flatnonzero(values)
    codebook, codes = np.unique(values[keys], return_inverse=True)
    if codebook.size > 2**t:
        raise EncodeError(
            f"array has {codebook.size} distinct non-zero values; t={t} holds at most {2**t} codes: "
            f"use t >= {math.ceil(math.log2(codebook.size))} or cluster the weights first"
        )
    keys, codes = keys.astype(np.int64), codes.reshape(-1)
    best, failures = None, []
    for name, ops in candidates:
        if best is not None and ops.floor is not None and _floor(ops, keys.size, t, ratio) >= len(best[2]):
            continue  # cannot be strictly smaller
        try:
            params, table = ops.build(keys, codes, t=t, seed=seed, ratio=ratio)
        except EncodeError as exc:
            if len(candidates) == 1:
                raise
            failures.append(f"{name}: {exc}")
            continue
        if best is None or len(table) < len(best[2]):  # strictly smaller: ties keep the earlier one
            best = (name, params, table)
    if best is None:
        raise EncodeError(f"no retrieval structure could be built ({'; '.join(failures)})")
    name, params, table = best
    meta = {"filter": name, "t": t, "K": int(codebook.size), "n": int(keys.size), **params}
    return Encoded(NAME, meta, {"codebook": codebook.astype(CENTROID_DTYPE).tobytes(), "table": table})


def decode(meta: Mapping, sections: Mapping[str, bytes], shape: tuple[int, ...]) -> np.ndarray:
    """Query every position: the stored weights exactly, plus the false positives.

    Parameters
    ----------
    meta : mapping
        As written by :func:`encode`.
    sections : mapping of str to bytes
        Exactly ``codebook`` and ``table``.
    shape : tuple of int
        Shape of the tensor.

    Returns
    -------
    ndarray of float32, shape ``shape``

    Raises
    ------
    CorruptFileError
        If a parameter is out of range or a section's length disagrees with the parameters.
    FormatError
        If ``meta["filter"]`` names a filter this version does not know.

    Examples
    --------
    >>> e = encode(np.eye(3, dtype=np.float32), t=12)
    >>> decode(e.meta, e.sections, (3, 3)).diagonal().tolist()
    [1.0, 1.0, 1.0]
    """
    return decode_into(meta, sections, shape, output_array(math.prod(shape))).reshape(shape)


def decode_into(meta: Mapping, sections: Mapping[str, bytes], shape: tuple[int, ...], out: np.ndarray) -> np.ndarray:
    """:func:`decode`, written into ``out``: flat float32 of ``prod(shape)`` elements, returned.

    No other array of the layer's size is made, so a caller that maps the bytes of an output
    file writes the layer there directly (``weightcodec decode -o f.pt``).

    Examples
    --------
    >>> e = encode(np.eye(2, dtype=np.float32), t=12)
    >>> decode_into(e.meta, e.sections, (2, 2), np.zeros(4, np.float32)).tolist()
    [1.0, 0.0, 0.0, 1.0]
    """
    ops, codebook, t = _read_params(meta, sections, math.prod(shape))
    lut = np.zeros(2**t, dtype=np.float32)  # codes K..2**t-1 read as "absent": a zero weight
    lut[: codebook.size] = codebook
    return ops.decode(meta, bytes(sections["table"]), lut, output_array(math.prod(shape), out))


def describe(meta: Mapping, sections: Mapping[str, bytes], shape: tuple[int, ...], *, measure: bool = True) -> dict:
    """Figures for ``inspect``: size against the ``n * t`` bound, expected and measured false positives.

    Parameters
    ----------
    meta, sections, shape
        As for :func:`decode`.
    measure : bool, optional
        Decode the tensor (float32 of ``shape``: memory and time in proportion to its size)
        to count the false positives; with False, ``measured_false_positives`` and
        ``nonzero`` are None and nothing is decoded.

    Returns
    -------
    dict
        ``filter``, ``n`` (stored non-zeros), ``m`` (cells), ``t``, ``clusters`` (K),
        ``nonzero`` (decoded non-zeros), ``bits_per_nonzero`` (all sections) and
        ``table_bits_per_nonzero``, ``bytes`` and ``section_bytes``, ``bound_bytes``
        (``n * t / 8``, the least any retrieval structure needs, plus the codebook),
        ``overhead_percent``, ``expected_false_positives`` (``(size - n) * K / 2**t``) and
        ``measured_false_positives`` (decoded non-zeros minus ``n``: every stored key
        decodes to its non-zero centroid).

    Raises
    ------
    CorruptFileError, FormatError
        As for :func:`decode`.

    Examples
    --------
    >>> e = encode(np.eye(4, dtype=np.float32), t=8, filter="bloomier")
    >>> d = describe(e.meta, e.sections, (4, 4))
    >>> d["n"], d["m"], d["clusters"], d["section_bytes"]
    (4, 39, 1, {'codebook': 4, 'table': 39})
    """
    size = math.prod(shape)
    _read_params(meta, sections, size)
    n, t, clusters = meta["n"], meta["t"], meta["K"]
    nonzero = int(np.count_nonzero(decode(meta, sections, shape))) if measure else None
    bound = n * t / BITS_PER_BYTE + len(sections["codebook"])
    return {
        "filter": meta["filter"],
        "n": n,
        "m": meta.get("m"),
        "t": t,
        "clusters": clusters,
        "nonzero": nonzero,
        "table_bits_per_nonzero": per(BITS_PER_BYTE * len(sections["table"]), n),
        **size_figures(sections, SECTIONS, bound, n),
        "expected_false_positives": expected_false_positives(clusters, t, size - n),
        "measured_false_positives": None if nonzero is None else nonzero - n,
    }


# ----------------------------------------------------------------------------- choosing t


def expected_false_positives(clusters: int, t: int, zeros: int) -> float:
    """Expected zero positions that decode non-zero: ``zeros * K / 2**t``.

    Examples
    --------
    >>> expected_false_positives(8, 8, 216_384)
    6762.0
    """
    return zeros * clusters / 2**t


def smallest_t(clusters: int, tolerated_false_positives: float, zeros: int) -> int:
    """The smallest cell width whose expected false positives stay within a tolerance.

    Parameters
    ----------
    clusters : int
        ``K``, the number of centroids (codes ``0..K-1``).
    tolerated_false_positives : float
        Expected count of zero positions decoding non-zero that is acceptable, ``>= 0``.
    zeros : int
        Zero positions of the layer (its size minus the non-zeros).

    Returns
    -------
    int
        The least ``t`` in 1..16 with ``2**t >= K`` and
        ``zeros * K / 2**t <= tolerated_false_positives``.

    Raises
    ------
    EncodeError
        For negative arguments, or if even ``t = 16`` expects too many false positives.

    Examples
    --------
    >>> smallest_t(8, 7000, 216_384)  # LeNet-300-100 FC-0 at 8 % density, 8 clusters
    8
    >>> smallest_t(8, 0, 0)
    3
    """
    if clusters < 0 or zeros < 0 or not tolerated_false_positives >= 0:
        raise EncodeError(
            f"smallest_t needs clusters >= 0, zeros >= 0 and tolerated_false_positives >= 0; got "
            f"{clusters}, {zeros}, {tolerated_false_positives}"
        )
    low = max(1, math.ceil(math.log2(clusters))) if clusters else 1
    for t in range(low, MAX_T + 1):
        if expected_false_positives(clusters, t, zeros) <= tolerated_false_positives:
            return t
    raise EncodeError(
        f"{zeros} zeros with {clusters} clusters expect {expected_false_positives(clusters, MAX_T, zeros):.1f} "
        f"false positives even at t={MAX_T}; tolerate more or use fewer clusters"
    )


def measured_false_positives(original: np.ndarray, decoded: np.ndarray) -> int:
    """Count the positions that are zero in ``original`` and non-zero in ``decoded``.

    Parameters
    ----------
    original, decoded : ndarray, same shape
        The layer before encoding and as decoded.

    Returns
    -------
    int

    Raises
    ------
    ValueError
        If the shapes differ.

    Examples
    --------
    >>> measured_false_positives(np.array([0, 1, 0, 0.]), np.array([0, 1, 2, 0.]))
    1
    """
    original, decoded = np.asarray(original), np.asarray(decoded)
    if original.shape != decoded.shape:
        raise ValueError(f"original has shape {original.shape}, decoded {decoded.shape}; they must match")
    return int(np.count_nonzero((original == 0) & (decoded != 0)))


# ----------------------------------------------------------------------------- checks


def _filter(name: str, error: type[Exception]) -> Filter:
    try:
        return FILTERS[name]
    except (KeyError, TypeError):
        known = list(FILTER_CHOICES) if error is EncodeError else sorted(FILTERS)
        raise error(f"unknown filter {name!r}; this weightcodec knows {known}") from None


def _floor(ops: Filter, n: int, t: int, ratio: float) -> float:
    """The filter's lower bound of table bytes, or 0 when it cannot say (a ratio it refuses)."""
    try:
        return ops.floor(n, t, ratio)
    except (TypeError, ValueError, OverflowError):
        return 0


def _check_t(t: int) -> int:
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 1 <= t <= MAX_T:
        raise EncodeError(f"t must be an int in 1..{MAX_T} (bits per cell), got {t!r}")
    return int(t)


def _read_params(meta: Mapping, sections: Mapping[str, bytes], size: int) -> tuple[Filter, np.ndarray, int]:
    """Check the common parameters and the codebook; return the filter, codebook and ``t``."""
    check_sections(sections, SECTIONS, NAME)
    ops = _filter(meta_str(meta, "filter", NAME), FormatError)
    t = meta_int(meta, "t", 1, MAX_T, NAME)
    n = meta_int(meta, "n", 0, size, NAME)
    clusters = meta_int(meta, "K", 0, min(2**t, n), NAME)
    if (clusters == 0) != (n == 0):
        raise CorruptFileError(f"weightless tensor has K={clusters} centroids for n={n} non-zeros")
    data = bytes(sections["codebook"])
    if len(data) != clusters * CENTROID_DTYPE.itemsize:
        raise CorruptFileError(f"weightless codebook is {len(data)} bytes; K={clusters} needs {clusters * 4}")
    return ops, read_codebook(data, clusters, NAME), t
