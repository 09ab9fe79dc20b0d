"""The torch-free half of writing a ``.wcz`` file's tensors to a state_dict file: read, check, decode.

:func:`start` reads and checks the file and, for a ``.pt`` / ``.pth`` output, starts decoding
its tensors at once on a background thread (:func:`~weightcodec.codecs.parallel.run_ahead`);
:func:`weightcodec.api.write_decoded` turns the arrays into tensors and writes the file.
``weightcodec decode`` imports torch between the two calls, so the decoding (numba kernels that
release the GIL) runs while torch is imported; :func:`weightcodec.api.decompress_file` makes
both calls in turn. A ``.safetensors`` output is written tensor by tensor in safetensors' own
order (:func:`weightcodec.tensors.write_state_dict`), so its tensors are decoded as the writer
asks for them, none ahead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from . import container
from .codecs.parallel import ordered_map, run_ahead

__all__ = ["Decoding", "start"]

# outputs written with torch.save, which needs every tensor at once, in the file's order
AHEAD_SUFFIXES = (".pt", ".pth")


class Decoding:
    """A checked ``.wcz`` file whose tensors are being decoded, ``jobs`` at a time (see :func:`start`)."""

    def __init__(self, wcz: container.WczFile, jobs: int, ahead: bool):
        self.wcz, self.jobs = wcz, jobs
        self._order = [rec.name for rec in wcz.records]
        self._ahead = run_ahead(ordered_map(wcz.decode, self._order, jobs)) if ahead else None

    def arrays(self, names: Sequence[str]) -> Iterator[np.ndarray]:
        """The decoded arrays of ``names``, in that order: those already under way if they are the file's tensors in order."""
        if self._ahead is not None and list(names) == self._order:
            ahead, self._ahead = self._ahead, None
            return ahead
        return ordered_map(self.wcz.decode, names, self.jobs)


def start(wcz_path: str | os.PathLike, path: str | os.PathLike, *, jobs: int = 1, max_bytes: int | None = None) -> Decoding:
    """Read and check ``wcz_path`` for writing to ``path``; for a ``.pt`` / ``.pth``, start decoding now.

    A ``.safetensors`` output holds about ``jobs`` decoded tensors at a time, so only the
    ``jobs`` largest are checked against the memory budget ``max_bytes``; a ``.pt`` holds them
    all (``torch.save``), so the whole file is checked, as :func:`weightcodec.load` does.

    Raises
    ------
    WeightcodecError
        As :func:`weightcodec.load`, or if ``path`` cannot be written.
    """
    container.check_writable(path)
    wcz = container.read(wcz_path)
    held = wcz.records
    if Path(path).suffix == ".safetensors":
        held = sorted(held, key=container.decoded_nbytes, reverse=True)[: max(jobs, 1)]
    container.check_budget(held, max_bytes)
    return Decoding(wcz, jobs, ahead=Path(path).suffix in AHEAD_SUFFIXES)
