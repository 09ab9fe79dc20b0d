"""Raw codec: the tensor's bytes as they are (little-endian), for biases, norms and anything not worth compressing."""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from ..errors import CorruptFileError, EncodeError
from .base import Encoded

__all__ = ["NAME", "encode", "decode", "describe"]

NAME = "raw"

# Numeric dtypes a raw section may hold; anything else (object, strings) is refused on read.
ALLOWED_DTYPES = frozenset(
    "|b1 |i1 |u1 <i2 <u2 <i4 <u4 <i8 <u8 <f2 <f4 <f8".split()
)


def encode(array: np.ndarray) -> Encoded:
    """Store ``array`` verbatim in little-endian byte order.

    Examples
    --------
    >>> e = encode(np.arange(3, dtype=np.float32))
    >>> e.meta, len(e.sections["data"])
    ({'dtype': '<f4'}, 12)
    """
    array = np.asarray(array)
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    if little.dtype.str not in ALLOWED_DTYPES:
        raise EncodeError(f"raw codec cannot store dtype {array.dtype}; expected one of {sorted(ALLOWED_DTYPES)}")
    return Encoded(NAME, {"dtype": little.dtype.str}, {"data": np.ascontiguousarray(little).tobytes()})


def decode(meta: Mapping, sections: Mapping[str, bytes], shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`encode`; checks dtype and length against ``shape`` before reading."""
    return _view(meta, sections, shape).copy()


def describe(meta: Mapping, sections: Mapping[str, bytes], shape: tuple[int, ...], *, measure: bool = True) -> dict:
    """Figures for ``inspect``: a raw tensor is its own lower bound; its non-zeros are counted in place.

    Counting reads the stored bytes without a copy, so it is done whatever ``measure`` says.

    Examples
    --------
    >>> e = encode(np.array([0, 1.5, 0], dtype=np.float32))
    >>> describe(e.meta, e.sections, (3,))
    {'nonzero': 1, 'bytes': 12, 'bound_bytes': 12}
    """
    nbytes = len(sections["data"])
    return {"nonzero": int(np.count_nonzero(_view(meta, sections, shape))), "bytes": nbytes, "bound_bytes": nbytes}


def _view(meta: Mapping, sections: Mapping[str, bytes], shape: tuple[int, ...]) -> np.ndarray:
    """The stored values as a read-only array of ``shape`` over the section's bytes, checked."""
    dtype_str = meta.get("dtype")
    if not isinstance(dtype_str, str) or dtype_str not in ALLOWED_DTYPES:
        raise CorruptFileError(f"raw tensor has dtype {dtype_str!r}; expected one of {sorted(ALLOWED_DTYPES)}")
    dtype = np.dtype(dtype_str)
    data = sections["data"]
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise CorruptFileError(f"raw tensor holds {len(data)} bytes; shape {tuple(shape)} of {dtype} needs {expected}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)
