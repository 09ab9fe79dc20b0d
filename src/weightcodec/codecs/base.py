"""The shape every codec shares: an array in, named byte sections plus a small JSON meta out.

A codec is a module with

* ``NAME``: its registry name, stored in the file;
* ``encode(array, **params) -> Encoded``: ``array`` is a float32 NumPy array of any shape;
* ``decode(meta, sections, shape) -> np.ndarray``: the inverse, returns float32 of ``shape``;
* optionally ``decode_into(meta, sections, shape, out) -> out``: the same values written into
  ``out``, a flat float32 array of the tensor's size, with no other array of that size (the
  container hands it the mapped bytes of an output file; other codecs' results are copied in);
* ``describe(meta, sections, shape, *, measure=True) -> dict``: figures for ``inspect`` (bits
  per non-zero, lower bound in bytes, ``nonzero``...), computed from the stored data alone;
  with ``measure=False`` the figures that need a decode are None and nothing is decoded.

``decode`` must cost memory in proportion to its output (about one output array, plus the
sections), never to what the header claims in intermediate arrays: a few bytes may legitimately
describe a huge tensor.

Codecs never import torch and never open files: the container (``weightcodec.container``)
stores ``meta`` in the file's JSON header and each section as a checksummed raw buffer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["Encoded"]


@dataclass(frozen=True)
class Encoded:
    """One encoded tensor.

    Attributes
    ----------
    codec : str
        Registry name of the codec that produced it (``"raw"``, ``"deep"``, ``"weightless"``...).
    meta : dict
        JSON-serialisable parameters needed to decode (small: numbers, short strings, lists).
    sections : dict of str to bytes
        Named raw buffers, in the order they are written to the file. Bytes-like: a file
        that is read gives read-only memoryviews of its buffer (no copy).
    """

    codec: str
    meta: dict[str, Any] = field(default_factory=dict)
    sections: Mapping[str, bytes] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes of all sections (the payload; the header entry is extra)."""
        return sum(len(b) for b in self.sections.values())
