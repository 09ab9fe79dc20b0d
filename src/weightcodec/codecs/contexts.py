"""Context classes for the deep codec's code stream: one entropy model per (row class, column class).

Rows and columns of a trained weight matrix have their own spread: an embedding row of a rare
token holds small weights, an input feature with a large activation range gets large ones. A
single order-0 model for every weight of the tensor pays for that mixture. Here each row of the
tensor's ``rows x cols`` view (first dimension by the rest) gets one of ``R`` classes and each
column one of ``C``, by the mean magnitude of its weights (quantiles, so classes are about
equally full); an entry's context is ``row_class * C + column_class``, and the codes of each
context form their own stream with their own model (Huffman or ANS, whichever the tensor uses).
The classes are stored (``rows * log2(R) + cols * log2(C)`` bits before entropy coding), so
the decoder knows every entry's context from its position alone and needs no adaptation.

This is the order-0 analogue of DeepCABAC's neighbourhood contexts (Wiegand et al., 2019),
which adapt to the same spread as they go: on MiniLM's k-means-clustered matrices the classes
take the whole file 1.5 % below the order-0 entropy of the codes alone
(``benchmarks/results/lossless-minilm.md``).

Section ``classes``::

    u8 R, u8 C                       1 <= R, C <= MAX_CLASSES
    varint n, n bytes                row classes: ``rows`` symbols in [0, R), coded (empty if R = 1)
    varint n, n bytes                column classes: ``cols`` symbols in [0, C), coded (empty if C = 1)

Section ``codes`` with classes: for each context ``0 .. R*C-1`` in order, ``varint count,
varint n, n bytes``: the count of its entries and their codes, coded, in position order.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

from ..errors import CorruptFileError
from .huffman import counts_entropy_bits
from .varint import encode_varints, read_varint

__all__ = ["MAX_CLASSES", "Classes", "choose_classes", "contexts_of", "encode_by_context", "read_classes",
           "ContextReader"]  # fmt: skip

MAX_CLASSES = 16  # per axis
# (R, C) tried; the one with the smallest estimated size is encoded and kept if it beats one model.
CANDIDATES = tuple((r, c) for r in (1, 2, 4, 8, 16) for c in (1, 2, 4, 8) if r * c > 1)
MODEL_BYTES_PER_SYMBOL = 1.5  # a stored model's rough cost per distinct symbol, for the estimate only
_MAX_VARINT = 10
READ_CHUNK = 1 << 16


class Classes(NamedTuple):
    """Row and column classes of a tensor's ``rows x cols`` view."""

    row_classes: int  # R
    col_classes: int  # C
    rows: np.ndarray  # uint8, (rows,): class of each row
    cols: np.ndarray  # uint8, (cols,): class of each column


def quantile_classes(strength: np.ndarray, n: int) -> np.ndarray:
    """Class ``0 .. n-1`` of each item by the quantiles of ``strength`` (ties go to the lower class)."""
    if n == 1:
        return np.zeros(len(strength), dtype=np.uint8)
    edges = np.quantile(strength, np.linspace(0, 1, n + 1)[1:-1])
    return np.searchsorted(edges, strength, side="left").astype(np.uint8)


def contexts_of(positions: np.ndarray, classes: Classes) -> np.ndarray:
    """Context of each flat position (int64): its row's class times C plus its column's class."""
    return _context(*np.divmod(positions, len(classes.cols)), classes)


def _context(row: np.ndarray, col: np.ndarray, classes: Classes) -> np.ndarray:
    return classes.rows[row].astype(np.int64) * classes.col_classes + classes.cols[col]


def choose_classes(matrix: np.ndarray, codes: np.ndarray, positions: np.ndarray) -> Classes | None:
    """The (R, C) classes whose estimated code-stream size is smallest, or None if one model is best.

    ``matrix`` is the tensor's ``rows x cols`` view, ``codes`` the code of each entry (fillers
    included) and ``positions`` its flat position. The estimate: order-0 entropy per context,
    the classes at ``log2`` bits each, and :data:`MODEL_BYTES_PER_SYMBOL` per distinct code per context.
    """
    row_strength, col_strength = np.abs(matrix).mean(axis=1), np.abs(matrix).mean(axis=0)
    alphabet = int(codes.max()) + 1 if len(codes) else 1
    row, col = np.divmod(positions, matrix.shape[1])  # once for every candidate

    def estimate(classes: Classes) -> float:
        ctx = _context(row, col, classes)
        counts = np.bincount(ctx * alphabet + codes, minlength=classes.row_classes * classes.col_classes * alphabet)
        per_context = counts.reshape(-1, alphabet)
        bits = sum(counts_entropy_bits(c) for c in per_context)
        side = len(row_strength) * math.log2(classes.row_classes) + len(col_strength) * math.log2(classes.col_classes)
        return (bits + side) / 8 + MODEL_BYTES_PER_SYMBOL * np.count_nonzero(per_context)

    one = estimate(Classes(1, 1, np.zeros(len(row_strength), np.uint8), np.zeros(len(col_strength), np.uint8)))
    best, best_cost = None, one
    for r, c in CANDIDATES:
        if r > len(row_strength) or c > len(col_strength):
            continue
        classes = Classes(r, c, quantile_classes(row_strength, r), quantile_classes(col_strength, c))
        cost = estimate(classes)
        if cost < best_cost:
            best, best_cost = classes, cost
    return best


def encode_classes(classes: Classes, encode: Callable[[np.ndarray], bytes]) -> bytes:
    """The ``classes`` section."""
    out = bytearray([classes.row_classes, classes.col_classes])
    for n, values in ((classes.row_classes, classes.rows), (classes.col_classes, classes.cols)):
        stream = encode(values.astype(np.int64)) if n > 1 else b""
        out += encode_varints([len(stream)]) + stream
    return bytes(out)


def encode_by_context(codes: np.ndarray, ctx: np.ndarray, contexts: int, encode: Callable[[np.ndarray], bytes]) -> bytes:
    """The ``codes`` section with classes: each context's codes as their own stream, in position order."""
    out = bytearray()
    for c in range(contexts):
        part = codes[ctx == c]
        stream = encode(part) if len(part) else b""
        out += encode_varints([len(part), len(stream)]) + stream
    return bytes(out)


def read_classes(data: bytes, rows: int, cols: int, reader: Callable[[bytes, int], object]) -> Classes:
    """Parse and check a ``classes`` section for a ``rows x cols`` view (streams read in chunks)."""
    if len(data) < 2:
        raise CorruptFileError(f"deep classes section of {len(data)} bytes; expected at least 2")
    r, c = data[0], data[1]
    if not (1 <= r <= min(MAX_CLASSES, rows) and 1 <= c <= min(MAX_CLASSES, cols)):
        raise CorruptFileError(f"deep classes: {r} row and {c} column classes for a {rows} x {cols} view")
    offset, arrays = 2, []
    for n, length in ((r, rows), (c, cols)):
        size, offset = read_varint(data, offset, what="deep classes", max_bytes=_MAX_VARINT)
        stream, offset = bytes(data[offset : offset + size]), offset + size
        if len(stream) != size or (n == 1) != (size == 0):
            raise CorruptFileError("deep classes section is truncated or holds a stream where none belongs")
        arrays.append(_read_small_symbols(reader(stream, length), length, n) if n > 1 else np.zeros(length, np.uint8))
    if offset != len(data):
        raise CorruptFileError(f"deep classes section has {len(data) - offset} trailing bytes")
    return Classes(r, c, arrays[0], arrays[1])


def _read_small_symbols(stream, count: int, n: int) -> np.ndarray:
    """All ``count`` symbols of ``stream`` as uint8, each checked to be below ``n``, a chunk at a time."""
    out = np.empty(count, dtype=np.uint8)
    for start in range(0, count, READ_CHUNK):
        values = stream.read(min(READ_CHUNK, count - start))
        if values.min() < 0 or values.max() >= n:
            raise CorruptFileError(f"deep classes hold a class outside 0..{n - 1}")
        out[start : start + len(values)] = values
    stream.close()
    return out


class ContextReader:
    """Reads a ``codes`` section with classes: the codes of given positions, a chunk at a time."""

    def __init__(self, data: bytes, classes: Classes, entries: int, reader: Callable[[bytes, int], object]):
        self.classes, self.readers, offset = classes, [], 0
        for _ in range(classes.row_classes * classes.col_classes):
            count, offset = read_varint(data, offset, what="deep codes", max_bytes=_MAX_VARINT)
            size, offset = read_varint(data, offset, what="deep codes", max_bytes=_MAX_VARINT)
            stream, offset = bytes(data[offset : offset + size]), offset + size
            if len(stream) != size or count > entries:
                raise CorruptFileError("deep codes section is truncated or claims more entries than the tensor has")
            self.readers.append(reader(stream, count))
        if offset != len(data):
            raise CorruptFileError(f"deep codes section has {len(data) - offset} trailing bytes")
        if sum(r.left for r in self.readers) != entries:
            raise CorruptFileError(f"deep codes: the contexts' counts do not add up to the {entries} entries")

    def read(self, positions: np.ndarray) -> np.ndarray:
        """The codes of the entries at ``positions`` (the next ones in position order)."""
        ctx = contexts_of(positions, self.classes)
        order = np.argsort(ctx, kind="stable")
        counts = np.bincount(ctx, minlength=len(self.readers))
        parts = []
        for reader, n in zip(self.readers, counts):
            if n > reader.left:
                raise CorruptFileError("deep codes: a context holds fewer entries than the positions need")
            parts.append(reader.read(int(n)))
        codes = np.empty(len(positions), dtype=np.int64)
        codes[order] = np.concatenate(parts)
        return codes

    def close(self) -> None:
        """Check that every context's stream was read to its end."""
        for reader in self.readers:
            reader.close()
