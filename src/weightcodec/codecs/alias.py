"""Alias: a tensor that is another tensor of the same file (tied weights), stored once.

A state_dict may hold one tensor under two names: tied weights, such as a language model's
output projection that *is* its input embedding (``torch.save`` keeps them shared). The
second name is stored as an ``alias`` entry: no sections, and ``meta = {"target": name}``, the
name of an earlier tensor of the same dtype and shape. The file (:mod:`weightcodec.container`)
resolves it, since a codec sees only its own sections; decoding gives back one tensor under
both names, shared again.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..errors import CorruptFileError, FormatError
from .base import Encoded

__all__ = ["NAME", "encode", "decode", "describe", "target"]

NAME = "alias"


def encode(target_name: str) -> Encoded:
    """An entry that stands for the tensor called ``target_name``.

    Examples
    --------
    >>> encode("embed.weight")
    Encoded(codec='alias', meta={'target': 'embed.weight'}, sections={})
    """
    return Encoded(NAME, {"target": target_name}, {})


def target(meta: Mapping) -> str:
    """The name an alias entry stands for, checked to be a non-empty string and nothing else stored.

    Raises
    ------
    CorruptFileError
        If ``meta`` has no ``target`` string.
    """
    name = meta.get("target")
    if not isinstance(name, str) or not name:
        raise CorruptFileError(f"alias entry has target {name!r}, expected the name of an earlier tensor")
    return name


def decode(meta: Mapping, sections: Mapping[str, bytes], shape: tuple[int, ...]) -> np.ndarray:
    """An alias has no values of its own: the file decodes its target instead (see the module docstring).

    Raises
    ------
    FormatError
        Always: called directly, without the file, there is nothing to decode.
    """
    raise FormatError(f"an alias of {target(meta)!r} is decoded through its file (WczFile.decode), not on its own")


def describe(meta: Mapping, sections: Mapping[str, bytes], shape: tuple[int, ...], *, measure: bool = True) -> dict:
    """Figures for ``inspect``: no bytes of its own (its non-zeros are its target's)."""
    return {"nonzero": None, "bytes": 0, "bound_bytes": 0, "target": target(meta)}
