"""Lossless storage of an already quantized state_dict: the smallest exact codec per tensor.

A model that another tool quantized (NNCodec, int8 with one scale, k-means codebooks) has
tensors on a uniform grid or with few distinct values. :func:`encode_exact` stores each tensor
bit for bit with the smallest of

* ``uniform`` when every value is ``level * Δ`` in float32 (:func:`~weightcodec.codecs.uniform.grid_step`);
* ``deep`` (Huffman and ANS, the smaller, each with the codes split by row and column classes
  where that is smaller) when it has at most 256 distinct non-zero values;
* ``raw``, its own bytes, always.

Exact means equal values (a -0.0 may come back as +0.0). Float tensors are compared in float32; a
tensor of another float dtype is only coded when float32 holds its values exactly, as it holds
every float16 / bfloat16 value.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from . import __version__, container, tensors
from .codecs import deep, uniform

__all__ = ["encode_exact"]


def encode_exact(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> dict:
    """Write ``state_dict`` losslessly to ``path``, each tensor with its smallest exact codec.

    Returns
    -------
    dict
        ``file_bytes``, ``seconds`` and ``tensors``: name -> ``{"codec", "bytes"}``.

    Examples
    --------
    >>> import tempfile
    >>> sd = {"w": torch.tensor([[0.25, -0.5], [0.0, 0.75]]), "i": torch.arange(3)}
    >>> with tempfile.TemporaryDirectory() as d:
    ...     report = encode_exact(sd, Path(d) / "m.wcz")
    >>> report["tensors"]["w"]["codec"], report["tensors"]["i"]["codec"]
    ('uniform', 'raw')
    """
    started = time.perf_counter()
    container.check_writable(path)
    records = [_smallest_exact(name, tensor) for name, tensor in state_dict.items()]
    data = container.to_bytes(records, {"producer": f"weightcodec {__version__}", "method": "encode_exact"})
    container.atomic_write_bytes(Path(path), data)
    return {
        "file_bytes": len(data),
        "seconds": time.perf_counter() - started,
        "tensors": {rec.name: {"codec": rec.encoded.codec, "bytes": rec.nbytes} for rec in records},
    }


def _smallest_exact(name: str, tensor: torch.Tensor) -> container.TensorRecord:
    candidates = [tensors.encode_tensor(name, tensor)]
    if tensor.is_floating_point() and tensor.numel() > 0:
        values = tensor.detach().cpu().to(torch.float32).numpy()
        if np.isfinite(values).all() and torch.equal(torch.from_numpy(values).to(tensor.dtype), tensor.detach().cpu()):
            step = uniform.grid_step(values)
            if step is not None:
                candidates.append(tensors.encode_tensor(name, tensor, uniform.NAME, step=step))
            if np.unique(values[values != 0]).size <= deep.MAX_CLUSTERS:
                candidates.append(tensors.encode_deep_smallest(name, tensor, contexts=True))
    return min(candidates, key=lambda record: record.nbytes)  # ties: raw first, then uniform
