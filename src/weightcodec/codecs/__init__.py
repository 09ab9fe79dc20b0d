"""Codecs: pure NumPy, no torch, no files. See :mod:`weightcodec.codecs.base` for the shared shape.

``CODECS`` maps the name stored in a file to the codec module; :func:`get_codec` looks one up.
"""

from __future__ import annotations

from types import ModuleType

from ..errors import FormatError
from . import raw
from .base import Encoded

__all__ = ["CODECS", "Encoded", "get_codec", "register"]

CODECS: dict[str, ModuleType] = {raw.NAME: raw}


def register(module: ModuleType) -> None:
    """Add a codec module (with NAME, encode, decode, describe) to the registry."""
    CODECS[module.NAME] = module


def get_codec(name: str) -> ModuleType:
    """Return the codec module called ``name``; the error lists the known ones."""
    try:
        return CODECS[name]
    except KeyError:
        raise FormatError(
            f"unknown codec {name!r}; this weightcodec knows {sorted(CODECS)} "
            "(a file from a newer weightcodec may need an upgrade)"
        ) from None


from . import weightless  # noqa: E402

register(weightless)


from . import deep  # noqa: E402

register(deep)


from . import uniform  # noqa: E402

register(uniform)


from . import alias  # noqa: E402

register(alias)
