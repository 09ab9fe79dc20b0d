"""LEB128 varints: the small unsigned integers of the entropy coders' stream headers.

Seven bits per byte, least significant group first, high bit set on every byte but the last.
Readers bound the length (``max_bytes``) so a damaged header cannot make them loop or
build huge integers, and name the stream (``what``) in their errors.
"""

from __future__ import annotations

from ..errors import CorruptFileError

__all__ = ["encode_varints", "read_varint"]

_LOW7 = 0x7F
_MORE = 0x80


def encode_varints(values: list[int]) -> bytes:
    """Concatenated LEB128 encodings of non-negative ``values``.

    >>> encode_varints([1, 300]).hex()
    '01ac02'
    """
    out = bytearray()
    for value in values:
        while value >= _MORE:
            out.append(_MORE | (value & _LOW7))
            value >>= 7
        out.append(value)
    return bytes(out)


def read_varint(data: bytes, offset: int, *, what: str, max_bytes: int) -> tuple[int, int]:
    """Read one varint at ``offset``; return ``(value, next_offset)``.

    Raises
    ------
    CorruptFileError
        If the data ends inside the varint or it is longer than ``max_bytes``.

    >>> read_varint(bytes.fromhex('01ac02'), 1, what="test", max_bytes=3)
    (300, 3)
    """
    value = 0
    for i in range(max_bytes):
        if offset + i >= len(data):
            raise CorruptFileError(f"{what} is truncated at byte {offset + i} (inside a varint)")
        byte = data[offset + i]
        value |= (byte & _LOW7) << (7 * i)
        if byte < _MORE:
            return value, offset + i + 1
    raise CorruptFileError(f"{what} holds a varint longer than {max_bytes} bytes at byte {offset}")
