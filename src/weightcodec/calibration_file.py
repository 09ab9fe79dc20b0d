"""The calibration file of ``weightcodec encode --size ... --calibrate FILE``: importances by tensor name.

A bare state_dict file holds no architecture, so ``encode`` cannot run the model on inputs.
The inputs are run once, where the model lives, by
:func:`weightcodec.calibration_statistics`; what it returns (per Linear weight the input
second moments, per Embedding weight the row frequencies; its size depends on the model, not
on the number of inputs) is the file::

    import weightcodec
    stats = weightcodec.calibration_statistics(model, batches, full=True)  # a few hundred unlabeled inputs
    weightcodec.save_calibration(stats, "calibration.safetensors")
    torch.save(model.state_dict(), "model.pt")
    # weightcodec encode model.pt -o model.wcz --size 10MB --calibrate calibration.safetensors

The format is a plain ``.safetensors`` file (a ``.pt`` file holding a dict of tensors is read
too): each key is a state_dict name (``"encoder.layer.0.attention.self.query.weight"``), each
tensor that weight's importances, of shape ``(1, in_features)``, ``(in_features,
in_features)`` (``full=True``: also compensates rounding GPTQ-style) or ``(rows, 1)``, non-negative;
tensors left out are allocated data-free. :func:`weightcodec.encode_to_size` checks that
every entry fits its weight.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from safetensors.torch import save

from . import container, state_files
from .errors import EncodeError, WeightcodecError

__all__ = ["save_calibration", "load_calibration"]


def save_calibration(statistics: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write :func:`weightcodec.calibration_statistics`' result to a ``.safetensors`` file (atomically).

    Raises
    ------
    EncodeError
        If ``path`` does not end in ``.safetensors`` or ``statistics`` is empty.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise EncodeError(f"{path}: a calibration file is written as .safetensors; name it e.g. calibration.safetensors")
    if not statistics:
        raise EncodeError("no calibration statistics to write: the model saw no Linear or Embedding input")
    arrays = {name: torch.from_numpy(np.ascontiguousarray(value, dtype=np.float64)) for name, value in statistics.items()}
    container.atomic_write_bytes(path, save(arrays))


def load_calibration(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a calibration file: state_dict name -> importances (float64), for ``encode_to_size(calibration=)``.

    Raises
    ------
    EncodeError
        If the file cannot be read as tensors by name, holds none, or holds non-numeric tensors.
    """
    try:
        stored = state_files.load_state_dict(path)
    except WeightcodecError as exc:
        raise EncodeError(f"calibration file: {exc}; write it with weightcodec.save_calibration") from None
    if not stored:
        raise EncodeError(f"{path}: the calibration file holds no tensors; write it with weightcodec.save_calibration")
    wrong = [f"{name} ({value.dtype})" for name, value in stored.items() if value.dtype == torch.bool or value.is_complex()]
    if wrong:
        raise EncodeError(f"{path}: calibration importances must be real numbers, got {', '.join(wrong)}")
    return {name: value.to(torch.float64).numpy() for name, value in stored.items()}
