"""Deep Compression's lossless storage of a pruned, clustered layer (Han et al., ICLR 2016).

The layer is already pruned (most weights exactly zero) and clustered (the non-zeros take at
most 256 distinct values, the centroids). It is stored as three sections::

    codebook   K float32 centroids, ascending               K * 4 bytes
    gaps       entropy-coded relative indices, with fillers  ~ entries * H(gap) bits
    codes      entropy-coded index of each entry's centroid  ~ entries * H(code) bits
               (code K marks a filler, a zero weight that only bridges a long gap)

    flat position:     0    1    2    3    4    5    6    7    8
    weight:            0  .75    0    0    0    0    0 -.25  .75    codebook [-.25, .75], b = 2
    entry:                  A                   F         B    C    F = filler (code K = 2)
    gap - 1:                1                   3         1    0
    code:                   1                   2         0    1

An entry is one non-zero weight or one filler. Fillers and the gap convention are those of
:mod:`~weightcodec.codecs.sparse_index`; both streams are coded by the entropy coder named in
``meta["entropy"]`` (Huffman, :mod:`~weightcodec.codecs.huffman`). The size is close to
``entries * (H(gap) + H(code))`` bits plus the tables and the codebook: :func:`describe`
reports it against that bound. Zeros, +0.0 and -0.0 alike, are the pruned positions and
decode as +0.0; every other value is restored bit for bit. Byte layouts: ``docs/codecs/deep.md``.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, NamedTuple

import numpy as np

from ..errors import CorruptFileError, EncodeError, FormatError
from .base import Encoded
from .ans import ans_decode, ans_encode
from .huffman import entropy_bits, huffman_decode, huffman_encode
from .sparse_index import MAX_INDEX_BITS, gaps_with_fillers, positions_from_gaps

__all__ = [
    "NAME",
    "MAX_CLUSTERS",
    "AUTO_INDEX_BITS",
    "EntropyCoder",
    "ENTROPY_CODERS",
    "build_codebook",
    "encode",
    "decode",
    "describe",
]

NAME = "deep"
# Codes are 0..K-1 plus the filler code K: K <= 256 keeps the paper's 8-bit conv codebooks.
MAX_CLUSTERS = 256
# Widths tried by index_bits="auto": covers the paper's 4, 5 and 8; gaps beyond 2^12 are too
# rare in a pruned layer for a wider field to pay for its extra bit on every entry.
AUTO_INDEX_BITS = range(1, 13)
SECTIONS = ("codebook", "gaps", "codes")
CENTROID_DTYPE = np.dtype("<f4")
BITS_PER_BYTE = 8


class EntropyCoder(NamedTuple):
    """A lossless coder for a stream of ints in ``[0, 2^16)``.

    ``encode(symbols) -> bytes`` must be deterministic; ``decode(data, count) -> ndarray`` must
    return exactly ``count`` ints or raise :class:`~weightcodec.errors.CorruptFileError`.
    Adding a coder is one entry in :data:`ENTROPY_CODERS`; its name is stored in ``meta``.
    """

    encode: Callable[[np.ndarray], bytes]
    decode: Callable[[bytes, int], np.ndarray]


ENTROPY_CODERS: dict[str, EntropyCoder] = {
    "huffman": EntropyCoder(huffman_encode, huffman_decode),
    "ans": EntropyCoder(ans_encode, ans_decode),  # rANS with a static per-stream model, docs/codecs/ans.md
}


class _Candidate(NamedTuple):
    """Both streams entropy-coded at one index width."""

    index_bits: int
    entries: int
    gaps: bytes
    codes: bytes


class _Streams(NamedTuple):
    """The decoded content of a deep tensor, validated."""

    codebook: np.ndarray  # float32, (K,)
    gap_symbols: np.ndarray  # int64, (entries,)
    codes: np.ndarray  # int64, (entries,), K marks a filler
    index_bits: int


def build_codebook(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a flat clustered array into codebook, codes and positions of its non-zeros.

    Parameters
    ----------
    values : ndarray of float32, shape (n,)
        Finite values; zeros (either sign) are pruned weights.

    Returns
    -------
    codebook : ndarray of float32, shape (K,)
        The distinct non-zero values (the centroids), ascending.
    codes : ndarray of int64, shape (nonzero,)
        Index into ``codebook`` of each non-zero, in position order.
    positions : ndarray of int64, shape (nonzero,)
        Flat positions of the non-zeros, ascending.

    Examples
    --------
    >>> cb, codes, pos = build_codebook(np.array([0, 0.5, 0, -1, 0.5], dtype=np.float32))
    >>> cb.tolist(), codes.tolist(), pos.tolist()
    ([-1.0, 0.5], [1, 0, 1], [1, 3, 4])
    """
    positions = np.flatnonzero(values)
    codebook, codes = np.unique(values[positions], return_inverse=True)
    return codebook.astype(np.float32), codes.reshape(-1).astype(np.int64), positions.astype(np.int64)


def encode(array: np.ndarray, *, index_bits: int | str = "auto", entropy: str = "huffman") -> Encoded:
    """Store a pruned, clustered float32 array as codebook + coded gaps + coded codes.

    Parameters
    ----------
    array : ndarray of float32, any shape
        At most 256 distinct non-zero values, all finite. Read in C order.
    index_bits : int or "auto"
        Width ``b`` of a gap field, 1..16 (the paper's tables: 5 for LeNet, 4 for AlexNet), or
        ``"auto"`` to try 1..12 and keep the smallest result (the narrowest width on ties).
    entropy : str
        Entropy coder for the gap and code streams, a key of :data:`ENTROPY_CODERS`.

    Returns
    -------
    Encoded
        Sections ``codebook``, ``gaps``, ``codes``; ``meta`` holds ``index_bits``,
        ``entropy`` and ``entries`` (non-zeros plus fillers). Equal input gives equal bytes.

    Raises
    ------
    EncodeError
        For a non-float32 array, NaN or infinite values, more than 256 distinct non-zero
        values, or an unknown ``index_bits`` / ``entropy``.

    Examples
    --------
    >>> w = np.array([[0, 0.5, 0], [0, 0, -0.25]], dtype=np.float32)
    >>> e = encode(w, index_bits=5)
    >>> e.meta
    {'index_bits': 5, 'entropy': 'huffman', 'entries': 2}
    >>> decode(e.meta, e.sections, w.shape).tolist()
    [[0.0, 0.5, 0.0], [0.0, 0.0, -0.25]]
    """
    coder = _entropy_coder(entropy, EncodeError)
    widths = _index_widths(index_bits)
    codebook, codes, positions = build_codebook(_check_array(array))
    if len(codebook) > MAX_CLUSTERS:
        raise EncodeError(
            f"array has {len(codebook)} distinct non-zero values; the deep codec stores at most {MAX_CLUSTERS}: "
            "cluster the weights first (k-means with k <= 256)"
        )
    candidates = [_encode_streams(codes, positions, len(codebook), b, coder) for b in widths]
    best = min(candidates, key=lambda c: (len(c.gaps) + len(c.codes), c.index_bits))
    meta = {"index_bits": best.index_bits, "entropy": entropy, "entries": best.entries}
    codebook_bytes = codebook.astype(CENTROID_DTYPE).tobytes()
    return Encoded(NAME, meta, {"codebook": codebook_bytes, "gaps": best.gaps, "codes": best.codes})


def decode(meta: Mapping, sections: Mapping[str, bytes], shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`encode`: the float32 array of ``shape``, bit for bit (zeros as +0.0).

    Parameters
    ----------
    meta : mapping
        ``index_bits``, ``entropy`` and ``entries`` as written by :func:`encode`.
    sections : mapping of str to bytes
        Exactly ``codebook``, ``gaps`` and ``codes``.
    shape : tuple of int
        Shape of the tensor.

    Returns
    -------
    ndarray of float32, shape ``shape``

    Raises
    ------
    CorruptFileError
        If any length, count, symbol or table is inconsistent with the others or with ``shape``.
    FormatError
        If ``meta["entropy"]`` names a coder this version does not know.

    Examples
    --------
    >>> e = encode(np.eye(3, dtype=np.float32))
    >>> decode(e.meta, e.sections, (3, 3)).diagonal().tolist()
    [1.0, 1.0, 1.0]
    """
    size = math.prod(shape)
    streams = _read_streams(meta, sections, size)
    is_filler = streams.codes == len(streams.codebook)
    out = np.zeros(size, dtype=np.float32)
    out[positions_from_gaps(streams.gap_symbols, is_filler)] = streams.codebook[streams.codes[~is_filler]]
    return out.reshape(shape)


def describe(meta: Mapping, sections: Mapping[str, bytes], shape: tuple[int, ...]) -> dict:
    """Figures for ``inspect``: counts, bits per entry, and the size against the entropy bound.

    Parameters
    ----------
    meta, sections, shape
        As for :func:`decode`.

    Returns
    -------
    dict
        ``nonzero``, ``fillers``, ``entries`` (their sum), ``clusters`` (K), ``index_bits``,
        ``entropy``, ``value_bits_fixed`` (``ceil(log2(K + 1))``, a code without entropy
        coding), ``bits_per_code`` and ``bits_per_gap`` (section bits per entry, tables
        included), ``bits_per_nonzero`` (all sections), ``bytes`` (total) and
        ``section_bytes`` (per section), ``bound_bytes`` (order-0 entropy of the gap stream
        plus that of the code stream, in bytes, plus the codebook bytes) and
        ``overhead_percent`` (``bytes`` over ``bound_bytes``, 0 when both are 0).

    Raises
    ------
    CorruptFileError, FormatError
        As for :func:`decode`.

    Examples
    --------
    >>> e = encode(np.eye(4, dtype=np.float32), index_bits=3)
    >>> d = describe(e.meta, e.sections, (4, 4))
    >>> d["nonzero"], d["fillers"], d["clusters"], d["section_bytes"]
    (4, 0, 1, {'codebook': 4, 'gaps': 5, 'codes': 2})
    """
    streams = _read_streams(meta, sections, math.prod(shape))
    clusters = len(streams.codebook)
    entries = len(streams.codes)
    fillers = int(np.count_nonzero(streams.codes == clusters))
    section_bytes = {name: len(sections[name]) for name in SECTIONS}
    total = sum(section_bytes.values())
    entropy_total = entropy_bits(streams.gap_symbols) + entropy_bits(streams.codes)
    bound = entropy_total / BITS_PER_BYTE + section_bytes["codebook"]
    return {
        "nonzero": entries - fillers,
        "fillers": fillers,
        "entries": entries,
        "clusters": clusters,
        "index_bits": streams.index_bits,
        "entropy": meta["entropy"],
        "value_bits_fixed": math.ceil(math.log2(clusters + 1)),
        "bits_per_code": _per(BITS_PER_BYTE * section_bytes["codes"], entries),
        "bits_per_gap": _per(BITS_PER_BYTE * section_bytes["gaps"], entries),
        "bits_per_nonzero": _per(BITS_PER_BYTE * total, entries - fillers),
        "bytes": total,
        "section_bytes": section_bytes,
        "bound_bytes": bound,
        "overhead_percent": _per(100.0 * (total - bound), bound),
    }


# ----------------------------------------------------------------------------- encoding steps


def _check_array(array: np.ndarray) -> np.ndarray:
    """The array as flat little-endian float32, after checking its dtype and that it is finite."""
    array = np.asarray(array)
    if array.dtype.kind != "f" or array.dtype.itemsize != 4:
        raise EncodeError(
            f"deep codec encodes float32 arrays, got {array.dtype}; convert with .astype(np.float32) first"
        )
    values = np.ascontiguousarray(array, dtype=CENTROID_DTYPE).reshape(-1)
    bad = ~np.isfinite(values)
    if bad.any():
        n_nan, n_inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
        raise EncodeError(
            f"deep codec needs finite values; array holds {n_nan} NaN and {n_inf} infinite values "
            f"(first at flat index {int(np.argmax(bad))})"
        )
    return values


def _index_widths(index_bits: int | str) -> range:
    if index_bits == "auto":
        return AUTO_INDEX_BITS
    if isinstance(index_bits, bool) or not isinstance(index_bits, (int, np.integer)) or not (
        1 <= index_bits <= MAX_INDEX_BITS
    ):
        raise EncodeError(f"index_bits must be 'auto' or an int in 1..{MAX_INDEX_BITS}, got {index_bits!r}")
    return range(int(index_bits), int(index_bits) + 1)


def _encode_streams(
    codes: np.ndarray, positions: np.ndarray, clusters: int, index_bits: int, coder: EntropyCoder
) -> _Candidate:
    """Entropy-code the gaps and the codes (filler code ``clusters``) at one index width."""
    gap_symbols, is_filler = gaps_with_fillers(positions, index_bits)
    entry_codes = np.full(len(gap_symbols), clusters, dtype=np.uint16)  # filler code K <= 256
    entry_codes[~is_filler] = codes
    return _Candidate(index_bits, len(gap_symbols), coder.encode(gap_symbols), coder.encode(entry_codes))


def _entropy_coder(name: str, error: type[Exception]) -> EntropyCoder:
    try:
        return ENTROPY_CODERS[name]
    except (KeyError, TypeError):
        raise error(
            f"unknown entropy coder {name!r}; this weightcodec knows {sorted(ENTROPY_CODERS)}"
        ) from None


# ----------------------------------------------------------------------------- decoding steps


def _read_streams(meta: Mapping, sections: Mapping[str, bytes], size: int) -> _Streams:
    """Decode and cross-check every part of a stored tensor of ``size`` elements."""
    if sorted(sections) != sorted(SECTIONS):
        raise CorruptFileError(f"deep tensor has sections {sorted(sections)}; expected {list(SECTIONS)}")
    index_bits, entries = _meta_int(meta, "index_bits", 1, MAX_INDEX_BITS), _meta_int(meta, "entries", 0, size)
    if not isinstance(meta.get("entropy"), str):
        raise CorruptFileError(f"deep tensor meta 'entropy' must be a string, got {meta.get('entropy')!r}")
    coder = _entropy_coder(meta["entropy"], FormatError)
    codebook = _read_codebook(bytes(sections["codebook"]))
    clusters = len(codebook)
    gap_symbols = coder.decode(bytes(sections["gaps"]), entries)
    codes = coder.decode(bytes(sections["codes"]), entries)
    _check_entries(gap_symbols, codes, clusters, index_bits, entries, size)
    return _Streams(codebook, gap_symbols, codes, index_bits)


def _meta_int(meta: Mapping, key: str, low: int, high: int) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CorruptFileError(f"deep tensor meta {key!r} is {value!r}; expected an int in {low}..{high}")
    return value


def _read_codebook(data: bytes) -> np.ndarray:
    if len(data) % CENTROID_DTYPE.itemsize or len(data) > MAX_CLUSTERS * CENTROID_DTYPE.itemsize:
        raise CorruptFileError(
            f"deep codebook is {len(data)} bytes; expected a multiple of 4, at most {MAX_CLUSTERS * 4}"
        )
    codebook = np.frombuffer(data, dtype=CENTROID_DTYPE).astype(np.float32)
    if not np.all(np.isfinite(codebook)) or np.any(codebook == 0) or np.any(np.diff(codebook) <= 0):
        raise CorruptFileError("deep codebook must hold finite, non-zero, strictly ascending centroids")
    return codebook


def _check_entries(
    gap_symbols: np.ndarray, codes: np.ndarray, clusters: int, index_bits: int, entries: int, size: int
) -> None:
    """The streams must be exactly what :func:`encode` writes for a tensor of ``size`` elements."""
    if len(gap_symbols) != entries or len(codes) != entries:
        raise CorruptFileError(
            f"deep streams hold {len(gap_symbols)} gaps and {len(codes)} codes; meta says {entries} entries"
        )
    span = 1 << index_bits
    if entries and (gap_symbols.min() < 0 or gap_symbols.max() >= span or codes.min() < 0 or codes.max() > clusters):
        raise CorruptFileError(
            f"deep streams hold gaps outside 0..{span - 1} or codes outside 0..{clusters} (filler = {clusters})"
        )
    is_filler = codes == clusters
    if np.any(gap_symbols[is_filler] != span - 1) or (entries and is_filler[-1]):
        raise CorruptFileError(f"deep fillers must store gap {span - 1} and may not end the stream")
    if not np.all(np.bincount(codes, minlength=clusters + 1)[:clusters]):
        raise CorruptFileError(f"deep codebook holds {clusters} centroids, not all of them used")
    last_position = int(gap_symbols.sum()) + entries - 1
    if last_position >= size:
        raise CorruptFileError(f"deep gaps reach flat position {last_position}; the tensor has {size} elements")


def _per(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, or 0.0 when there is nothing to divide by."""
    return numerator / denominator if denominator else 0.0
