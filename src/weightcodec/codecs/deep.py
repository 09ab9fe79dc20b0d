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
reports it against that bound. With ``contexts=True`` the codes may instead be split by the
row and column classes of :mod:`~weightcodec.codecs.contexts` (a fourth section, ``classes``),
one model per class pair, which takes a dense trained matrix below that bound. Zeros, +0.0 and
-0.0 alike, are the pruned positions and decode as +0.0; every other value is restored bit for bit. Byte layouts: ``docs/codecs/deep.md``.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, NamedTuple

import numpy as np

from ..errors import CorruptFileError, EncodeError, FormatError
from .base import Encoded
from .ans import ans_encode, ans_reader
from . import contexts as ctx
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
from .huffman import counts_entropy_bits, huffman_encode, huffman_reader
from .sparse_index import MAX_INDEX_BITS, gaps_with_fillers
from .uniform import matrix_shape

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
SECTIONS_WITH_CLASSES = ("codebook", "gaps", "classes", "codes")
# Entries decoded at a time: the decoder's working memory is a few arrays of this many int64,
# whatever the tensor's size (a 300-byte file may legitimately decode to a 256 MiB tensor);
# 2**14 .. 2**18 decode at about the same speed.
DECODE_CHUNK = 1 << 16


class EntropyCoder(NamedTuple):
    """A lossless coder for a stream of ints in ``[0, 2^16)``.

    ``encode(symbols) -> bytes`` must be deterministic. ``reader(data, count)`` checks the
    stream's table and returns an object whose ``read(n)`` gives the next ``n`` ints (int64)
    and whose ``close()`` checks that the stream ends exactly after ``count`` of them, and
    which counts the symbols still to read in ``left``; both raise
    :class:`~weightcodec.errors.CorruptFileError` for a damaged stream. Decoding in chunks keeps memory bounded whatever ``count`` claims. Adding a coder is one entry in
    :data:`ENTROPY_CODERS`; its name is stored in ``meta``.
    """

    encode: Callable[[np.ndarray], bytes]
    reader: Callable[[bytes, int], object]


ENTROPY_CODERS: dict[str, EntropyCoder] = {
    "huffman": EntropyCoder(huffman_encode, huffman_reader),
    "ans": EntropyCoder(ans_encode, ans_reader),  # rANS with a static per-stream model, docs/codecs/ans.md
}


class _Candidate(NamedTuple):
    """Both streams entropy-coded at one index width."""

    index_bits: int
    entries: int
    gaps: bytes
    codes: bytes


class _Scan(NamedTuple):
    """What decoding a deep tensor's streams showed, every entry checked."""

    codebook: np.ndarray  # float32, (K,)
    index_bits: int
    gap_counts: np.ndarray  # int64, (2**index_bits,): occurrences of each gap symbol
    code_counts: np.ndarray  # int64, (K + 1,): occurrences of each code, K = filler


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


def encode(array: np.ndarray, *, index_bits: int | str = "auto", entropy: str = "huffman", contexts: bool = False) -> Encoded:
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
    contexts : bool
        Also try the codes split by row and column classes (:mod:`~.contexts`, at the chosen
        index width) and keep that when it is smaller. Off by default: the paper's layout.

    Returns
    -------
    Encoded
        Sections ``codebook``, ``gaps``, (``classes``,) ``codes``; ``meta`` holds ``index_bits``,
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
    codebook, codes, positions = build_codebook(check_float32_array(array, NAME))
    if len(codebook) > MAX_CLUSTERS:
        raise EncodeError(
            f"array has {len(codebook)} distinct non-zero values; the deep codec stores at most {MAX_CLUSTERS}: "
            "cluster the weights first (k-means with k <= 256)"
        )
    candidates = [_encode_streams(codes, positions, len(codebook), b, coder) for b in _useful_widths(widths, positions)]
    best = min(candidates, key=lambda c: (len(c.gaps) + len(c.codes), c.index_bits))
    meta = {"index_bits": best.index_bits, "entropy": entropy, "entries": best.entries}
    sections = {"codebook": codebook.astype(CENTROID_DTYPE).tobytes(), "gaps": best.gaps, "codes": best.codes}
    if contexts:
        sections.update(_codes_by_context(array, codes, positions, len(codebook), best, coder))
    return Encoded(NAME, meta, {name: sections[name] for name in _layout(sections)})


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
    out = np.zeros(math.prod(shape), dtype=np.float32)
    _scan(meta, sections, shape, out)
    return out.reshape(shape)


def describe(meta: Mapping, sections: Mapping[str, bytes], shape: tuple[int, ...], *, measure: bool = True) -> dict:
    """Figures for ``inspect``: counts, bits per entry, and the size against the entropy bound.

    Parameters
    ----------
    meta, sections, shape
        As for :func:`decode`.
    measure : bool, optional
        Decode the streams (in chunks, memory bounded; time in proportion to the entries)
        for the figures that need them; with False, those are None and nothing is decoded.

    Returns
    -------
    dict
        ``nonzero``, ``fillers``, ``entries`` (their sum), ``clusters`` (K), ``index_bits``,
        ``entropy``, ``classes`` (``[R, C]`` row and column classes of the codes, or None),
        ``value_bits_fixed`` (``ceil(log2(K + 1))``, a code without entropy
        coding), ``bits_per_code`` and ``bits_per_gap`` (section bits per entry, tables
        included), ``bits_per_nonzero`` (all sections), ``bytes`` (total) and
        ``section_bytes`` (per section), ``bound_bytes`` (order-0 entropy of the gap stream
        plus that of the code stream, in bytes, plus the codebook bytes) and
        ``overhead_percent`` (``bytes`` over ``bound_bytes``, 0 when both are 0). Unmeasured:
        ``nonzero``, ``fillers``, ``bits_per_nonzero``, ``bound_bytes`` and ``overhead_percent``.

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
    size = math.prod(shape)
    if measure:
        scan = _scan(meta, sections, shape, None)
        clusters, index_bits = len(scan.codebook), scan.index_bits
        fillers = int(scan.code_counts[clusters])
        entropy_total = counts_entropy_bits(scan.gap_counts) + counts_entropy_bits(scan.code_counts)
        bound = entropy_total / BITS_PER_BYTE + len(sections["codebook"])
    else:
        codebook, index_bits, _ = _read_params(meta, sections, size)
        clusters = len(codebook)
        fillers = bound = None
    entries = meta["entries"]
    nonzero = None if fillers is None else entries - fillers
    return {
        "nonzero": nonzero,
        "fillers": fillers,
        "entries": entries,
        "clusters": clusters,
        "index_bits": index_bits,
        "entropy": meta["entropy"],
        "classes": list(sections["classes"][:2]) if "classes" in sections else None,
        "value_bits_fixed": math.ceil(math.log2(clusters + 1)),
        "bits_per_code": per(BITS_PER_BYTE * len(sections["codes"]), entries),
        "bits_per_gap": per(BITS_PER_BYTE * len(sections["gaps"]), entries),
        **size_figures(sections, _layout(sections), bound, nonzero),
    }


# ----------------------------------------------------------------------------- encoding steps


def _index_widths(index_bits: int | str) -> range:
    if index_bits == "auto":
        return AUTO_INDEX_BITS
    if isinstance(index_bits, bool) or not isinstance(index_bits, (int, np.integer)) or not (
        1 <= index_bits <= MAX_INDEX_BITS
    ):
        raise EncodeError(f"index_bits must be 'auto' or an int in 1..{MAX_INDEX_BITS}, got {index_bits!r}")
    return range(int(index_bits), int(index_bits) + 1)


def _entries(codes: np.ndarray, positions: np.ndarray, clusters: int, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Gap symbol and code (filler code ``clusters``) of every entry at one index width."""
    gap_symbols, is_filler = gaps_with_fillers(positions, index_bits)
    entry_codes = np.full(len(gap_symbols), clusters, dtype=np.uint16)  # filler code K <= 256
    entry_codes[~is_filler] = codes
    return gap_symbols, entry_codes


def _useful_widths(widths: range, positions: np.ndarray) -> range:
    """``widths`` without those wider than the narrowest one that needs no filler.

    From that width on, every gap fits its field: the streams are the same at every wider
    width, and the narrowest wins the tie, so trying them would only cost time (a dense
    tensor needs one try, not twelve).
    """
    if len(widths) == 1:
        return widths
    enough = max(1, (_largest_gap(positions) - 1).bit_length())  # 2**b >= the largest gap
    return range(widths.start, max(widths.start, min(widths.stop - 1, enough)) + 1)


def _largest_gap(positions: np.ndarray) -> int:
    """The largest distance between consecutive positions (the first from -1), in chunks: no array of all gaps."""
    largest = int(positions[0]) + 1 if len(positions) else 1
    for start in range(0, len(positions) - 1, DECODE_CHUNK):
        largest = max(largest, int(np.diff(positions[start : start + DECODE_CHUNK + 1]).max()))
    return largest


def _encode_streams(
    codes: np.ndarray, positions: np.ndarray, clusters: int, index_bits: int, coder: EntropyCoder
) -> _Candidate:
    """Entropy-code the gaps and the codes at one index width."""
    gap_symbols, entry_codes = _entries(codes, positions, clusters, index_bits)
    return _Candidate(index_bits, len(gap_symbols), coder.encode(gap_symbols), coder.encode(entry_codes))


def _codes_by_context(
    array: np.ndarray, codes: np.ndarray, positions: np.ndarray, clusters: int, best: _Candidate, coder: EntropyCoder
) -> dict[str, bytes]:
    """``classes`` and ``codes`` sections split by context, if some classes make them smaller; else nothing."""
    gap_symbols, entry_codes = _entries(codes, positions, clusters, best.index_bits)
    entry_positions = np.cumsum(gap_symbols.astype(np.int64) + 1) - 1
    matrix = array.reshape(matrix_shape(array.shape))
    classes = ctx.choose_classes(matrix, entry_codes.astype(np.int64), entry_positions)
    if classes is None:
        return {}
    contexts = ctx.contexts_of(entry_positions, classes)
    split = {"classes": ctx.encode_classes(classes, coder.encode),
             "codes": ctx.encode_by_context(entry_codes, contexts, classes.row_classes * classes.col_classes, coder.encode)}  # fmt: skip
    return split if len(split["classes"]) + len(split["codes"]) < len(best.codes) else {}


def _layout(sections: Mapping[str, bytes]) -> tuple[str, ...]:
    """The section names, in order, of a tensor with (or without) a ``classes`` section."""
    return SECTIONS_WITH_CLASSES if "classes" in sections else SECTIONS


def _entropy_coder(name: str, error: type[Exception]) -> EntropyCoder:
    try:
        return ENTROPY_CODERS[name]
    except (KeyError, TypeError):
        raise error(
            f"unknown entropy coder {name!r}; this weightcodec knows {sorted(ENTROPY_CODERS)}"
        ) from None


# ----------------------------------------------------------------------------- decoding steps


def _read_params(meta: Mapping, sections: Mapping[str, bytes], size: int) -> tuple[np.ndarray, int, EntropyCoder]:
    """The checked codebook, index width and entropy coder of a stored tensor of ``size`` elements."""
    check_sections(sections, _layout(sections), NAME)
    index_bits = meta_int(meta, "index_bits", 1, MAX_INDEX_BITS, NAME)
    meta_int(meta, "entries", 0, size, NAME)
    coder = _entropy_coder(meta_str(meta, "entropy", NAME), FormatError)
    return read_codebook(bytes(sections["codebook"]), MAX_CLUSTERS, NAME), index_bits, coder


def _scan(meta: Mapping, sections: Mapping[str, bytes], shape: tuple[int, ...], out: np.ndarray | None) -> _Scan:
    """Decode and check every entry, :data:`DECODE_CHUNK` at a time, writing weights into ``out``.

    The streams must be exactly what :func:`encode` writes for a tensor of ``shape``: gaps
    below ``2**index_bits``, codes up to the filler code ``K``, fillers storing the largest gap
    and never last, every centroid used, positions inside the tensor.
    """
    size = math.prod(shape)
    codebook, index_bits, coder = _read_params(meta, sections, size)
    entries, clusters, span = meta["entries"], len(codebook), 1 << index_bits
    gaps = coder.reader(bytes(sections["gaps"]), entries)
    if "classes" in sections:
        classes = ctx.read_classes(bytes(sections["classes"]), *matrix_shape(shape), coder.reader)
        codes = ctx.ContextReader(bytes(sections["codes"]), classes, entries, coder.reader)
        read_codes = codes.read  # by the entries' positions: they give each one's context
    else:
        codes = coder.reader(bytes(sections["codes"]), entries)
        read_codes = lambda ends: codes.read(len(ends))  # noqa: E731
    gap_counts = np.zeros(span, dtype=np.int64)
    code_counts = np.zeros(clusters + 1, dtype=np.int64)
    position, last_is_filler = -1, False
    for start in range(0, entries, DECODE_CHUNK):
        n = min(DECODE_CHUNK, entries - start)
        gap = gaps.read(n)
        if gap.min() < 0 or gap.max() >= span:
            raise CorruptFileError(f"deep gaps stream holds gaps outside 0..{span - 1}")
        ends = position + np.cumsum(gap + 1)  # int64: entries * 2**16 <= 2**56 cannot overflow
        if ends[-1] >= size:
            raise CorruptFileError(f"deep gaps reach flat position {int(ends[-1])}; the tensor has {size} elements")
        code = read_codes(ends)
        if code.min() < 0 or code.max() > clusters:
            raise CorruptFileError(f"deep codes stream holds codes outside 0..{clusters} (filler = {clusters})")
        is_filler = code == clusters
        if np.any(gap[is_filler] != span - 1):
            raise CorruptFileError(f"deep fillers must store gap {span - 1} and may not end the stream")
        position, last_is_filler = int(ends[-1]), bool(is_filler[-1])
        gap_counts += np.bincount(gap, minlength=span)
        code_counts += np.bincount(code, minlength=clusters + 1)
        if out is not None:
            keep = ~is_filler
            out[ends[keep]] = codebook[code[keep]]
    gaps.close()
    codes.close()
    if last_is_filler:
        raise CorruptFileError(f"deep fillers must store gap {span - 1} and may not end the stream")
    if not np.all(code_counts[:clusters]):
        raise CorruptFileError(f"deep codebook holds {clusters} centroids, not all of them used")
    return _Scan(codebook, index_bits, gap_counts, code_counts)
