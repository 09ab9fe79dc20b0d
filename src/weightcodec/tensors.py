"""Bridge between torch tensors and the NumPy arrays the codecs and the container work on.

Codecs see float32 NumPy arrays (or, for ``raw``, the tensor's own bytes); the file records each
tensor's logical dtype so that float16 / bfloat16 / float32 come back as they went in.
State_dict files (``.pt`` / ``.safetensors``) are read and written by :mod:`weightcodec.state_files`.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from . import container
from .codecs import alias, deep, get_codec, raw
from .errors import EncodeError

__all__ = [
    "DTYPE_NAMES",
    "tensor_to_numpy",
    "numpy_to_tensor",
    "encode_tensor",
    "encode_alias",
    "shared_aliases",
    "decode_file",
    "decode_into",
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


def encode_deep_smallest(name: str, tensor: torch.Tensor, **params) -> container.TensorRecord:
    """The deep codec's record with whichever entropy coder gives the fewest bytes (ties: Huffman, the paper's)."""
    records = (encode_tensor(name, tensor, deep.NAME, **{**params, "entropy": coder}) for coder in deep.ENTROPY_CODERS)
    return min(records, key=lambda record: record.nbytes)


def encode_alias(name: str, tensor: torch.Tensor, target_name: str) -> container.TensorRecord:
    """A record that stores ``tensor`` as the tensor ``target_name`` it shares its storage with."""
    return container.TensorRecord(name, dtype_name(tensor, name), tuple(tensor.shape), alias.encode(target_name))


def shared_aliases(state_dict: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Names whose tensor is the very same view of the same storage as an earlier name's (tied weights).

    Returns
    -------
    dict of str to str
        Each later name mapped to the first name of its tensor. Tensors that only overlap (other
        offset, shape or strides) are not aliases; nor are empty tensors.

    Examples
    --------
    >>> w = torch.ones(2, 3)
    >>> shared_aliases({"embed": w, "head": w, "other": w.clone(), "row": w[0]})
    {'head': 'embed'}
    """
    first: dict[tuple, str] = {}
    aliases = {}
    for name, tensor in state_dict.items():
        if tensor.numel() == 0:
            continue
        view = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.dtype,
                tuple(tensor.shape), tensor.stride())
        if view in first:
            aliases[name] = first[view]
        else:
            first[view] = name
    return aliases


def decode_file(wcz: container.WczFile, *, max_bytes: int | None = None) -> dict[str, torch.Tensor]:
    """Decode every tensor of a parsed file into a state_dict with the original dtypes.

    The whole file is checked against the memory budget ``max_bytes`` (default: the memory
    available) before anything is decoded; see :func:`weightcodec.container.check_budget`. An
    alias entry gives back its target's tensor object, so tied weights come back tied.
    """
    wcz.check_budget(max_bytes)
    state: dict[str, torch.Tensor] = {}
    for rec in wcz.records:
        if rec.encoded.codec == alias.NAME:
            state[rec.name] = state[alias.target(rec.encoded.meta)]  # the file checked it is an earlier tensor
        else:
            state[rec.name] = numpy_to_tensor(container.decode_record(rec), rec.dtype)
    return state


def decode_into(wcz: container.WczFile, name: str, target: torch.Tensor) -> None:
    """Decode tensor ``name`` into ``target``, a tensor of its dtype and shape (a mapped file's bytes).

    A float32 tensor is decoded in place (:func:`weightcodec.container.decode_record` with
    ``out``): a codec with ``decode_into`` then makes no other array of its size. Other dtypes,
    raw tensors and aliases are decoded as :func:`decode_file` does, then copied in.
    """
    record = wcz.record(name)
    if record.dtype == "float32" and record.encoded.codec not in (raw.NAME, alias.NAME):
        wcz.decode(name, out=target.numpy())
    else:
        target.copy_(numpy_to_tensor(wcz.decode(name), record.dtype))

