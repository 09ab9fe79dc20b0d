"""Bridge between torch tensors and the NumPy arrays the codecs and the container work on.

Codecs see float32 NumPy arrays (or, for ``raw``, the tensor's own bytes); the file records each
tensor's logical dtype so that float16 / bfloat16 / float32 come back as they went in.
This module also reads and writes the state_dict files users bring (``.pt`` / ``.safetensors``).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from . import container
from .codecs import get_codec, raw
from .errors import EncodeError, WeightcodecError

__all__ = [
    "DTYPE_NAMES",
    "tensor_to_numpy",
    "numpy_to_tensor",
    "encode_tensor",
    "decode_file",
    "load_state_dict",
    "save_state_dict",
    "STATE_DICT_SUFFIXES",
]

DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float64: "float64",
    torch.int64: "int64",
    torch.int32: "int32",
    torch.int16: "int16",
    torch.int8: "int8",
    torch.uint8: "uint8",
    torch.bool: "bool",
}
TORCH_DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}
#: File types :func:`save_state_dict` writes: safetensors, or a PyTorch pickle of tensors only.
STATE_DICT_SUFFIXES = (".pt", ".pth", ".safetensors")
STATE_DICT_KINDS = "a .pt/.pth written by torch.save(model.state_dict(), path), or a .safetensors file"


def dtype_name(tensor: torch.Tensor, name: str = "tensor") -> str:
    """The file's name for ``tensor.dtype``; a clear error for dtypes the format cannot hold."""
    try:
        return DTYPE_NAMES[tensor.dtype]
    except KeyError:
        raise EncodeError(f"{name}: dtype {tensor.dtype} is not supported; supported: {sorted(TORCH_DTYPES)}") from None


def tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's values as NumPy, bit for bit (bfloat16 as its uint16 bit pattern)."""
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy()


def numpy_to_tensor(array: np.ndarray, dtype: str) -> torch.Tensor:
    """Inverse of :func:`tensor_to_numpy` for raw data, or a cast of decoded float32 values to ``dtype``."""
    target = TORCH_DTYPES[dtype]
    if dtype == "bfloat16" and array.dtype == np.uint16:
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    # reshape: np.ascontiguousarray turns a 0-d array (a scalar tensor) into shape (1,)
    return torch.from_numpy(np.ascontiguousarray(array).reshape(array.shape)).to(target)


def encode_tensor(name: str, tensor: torch.Tensor, codec: str = "raw", **params) -> container.TensorRecord:
    """Encode one tensor with ``codec`` (``raw`` keeps its bytes; others get its float32 values)."""
    dtype = dtype_name(tensor, name)
    if codec == raw.NAME or tensor.numel() == 0:
        encoded = raw.encode(tensor_to_numpy(tensor))
    else:
        if not tensor.is_floating_point():
            raise EncodeError(f"{name}: codec {codec!r} needs a floating-point tensor, got {tensor.dtype}")
        values = tensor.detach().cpu().to(torch.float32).numpy()
        try:
            encoded = get_codec(codec).encode(values, **params)
        except EncodeError as exc:
            raise EncodeError(f"{name}: {exc}") from None
    return container.TensorRecord(name, dtype, tuple(tensor.shape), encoded)


def decode_file(wcz: container.WczFile, *, max_bytes: int | None = None) -> dict[str, torch.Tensor]:
    """Decode every tensor of a parsed file into a state_dict with the original dtypes.

    The whole file is checked against the memory budget ``max_bytes`` (default: the memory
    available) before anything is decoded; see :func:`weightcodec.container.check_budget`.
    """
    wcz.check_budget(max_bytes)
    return {rec.name: numpy_to_tensor(container.decode_record(rec), rec.dtype) for rec in wcz.records}


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state_dict from ``.safetensors`` or a PyTorch ``.pt``/``.pth`` file, safely.

    ``.pt`` files are read with ``weights_only=True``: a file that pickles a whole model object
    (``torch.save(model)``) is refused, since unpickling it could run arbitrary code.
    """
    path = Path(path)
    if path.is_dir():
        raise WeightcodecError(f"{path}: is a directory, expected a state_dict file ({STATE_DICT_KINDS})")
    if not path.is_file():
        raise WeightcodecError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise WeightcodecError(f"{path}: the file is empty (0 bytes), expected a state_dict file ({STATE_DICT_KINDS})")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as exc:  # safetensors raises its own error types
            raise WeightcodecError(f"{path}: not a readable .safetensors file: {exc}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused a pickled object: a whole model, most likely
        raise WeightcodecError(
            f"{path}: cannot load as a state_dict with weights_only=True (it pickles objects other than "
            "tensors). If it holds a whole model saved with torch.save(model), re-save it with "
            "torch.save(model.state_dict(), path)"
        ) from None
    except Exception as exc:  # torch.load raises many types for files it cannot parse
        raise WeightcodecError(
            f"{path}: not a file torch.load can read ({type(exc).__name__}); expected a state_dict file "
            f"({STATE_DICT_KINDS})"
        ) from None
    return _as_state_dict(obj, path)


def _as_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightcodecError(
            f"{path}: expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}. "
            "Save one with torch.save(model.state_dict(), path)"
        )
    return dict(obj)


def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write ``state_dict`` as ``.safetensors`` or a PyTorch ``.pt``/``.pth`` file (by suffix), atomically."""
    path = Path(path)
    if path.suffix not in STATE_DICT_SUFFIXES:
        raise WeightcodecError(f"{path}: cannot tell the file type from {path.suffix!r}; use one of {list(STATE_DICT_SUFFIXES)}")
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        data = save({k: v.contiguous() for k, v in state_dict.items()})
        container.atomic_write_bytes(path, data)
        return
    import io

    buffer = io.BytesIO()
    torch.save(dict(state_dict), buffer)
    container.atomic_write_bytes(path, buffer.getvalue())
