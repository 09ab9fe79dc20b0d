"""Bridge between torch tensors and the NumPy arrays the codecs and the container work on.

Codecs see float32 NumPy arrays (or, for ``raw``, the tensor's own bytes); the file records each
tensor's logical dtype so that float16 / bfloat16 / float32 come back as they went in.
This module also reads and writes the state_dict files users bring (``.pt`` / ``.safetensors``).
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np
import torch

from . import container
from .codecs import alias, deep, get_codec, raw
from .errors import EncodeError, WeightcodecError

__all__ = [
    "DTYPE_NAMES",
    "tensor_to_numpy",
    "numpy_to_tensor",
    "encode_tensor",
    "encode_alias",
    "shared_aliases",
    "decode_file",
    "load_state_dict",
    "StateDictFile",
    "save_state_dict",
    "write_state_dict",
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
#: safetensors' name of each dtype, and its rank: a file lays tensors out by rank descending, then name.
SAFETENSORS_CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64",
                     "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}
SAFETENSORS_RANK = {"bool": 0, "uint8": 1, "int8": 2, "int16": 5, "float16": 7, "bfloat16": 8, "int32": 9,
                    "float32": 11, "float64": 12, "int64": 13}
SAFETENSORS_DTYPES = {code: TORCH_DTYPES[name] for name, code in SAFETENSORS_CODES.items()}
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


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state_dict from ``.safetensors`` or a PyTorch ``.pt``/``.pth`` file, safely, all at once.

    ``.pt`` files are read with ``weights_only=True``: a file that pickles a whole model object
    (``torch.save(model)``) is refused, since unpickling it could run arbitrary code.
    :class:`StateDictFile` reads the same file one tensor at a time.
    """
    path = Path(path)
    _check_state_dict_path(path)
    if path.suffix == ".safetensors":
        source = StateDictFile(path)
        return {name: source[name] for name in source}
    return _as_state_dict(_torch_load(path), path)


class StateDictFile(Mapping[str, torch.Tensor]):
    """A state_dict file (``.safetensors``, ``.pt``/``.pth``) read one tensor at a time.

    Opening reads only the names, dtypes and shapes (:attr:`specs`); each ``source[name]`` maps
    the file, copies that one tensor out and unmaps it again, so encoding a model tensor by
    tensor holds one tensor at a time, whatever the model's size. ``.safetensors`` files are
    memory-mapped with ``safe_open``; ``.pt`` files with ``torch.load(mmap=True,
    weights_only=True)`` (a file in torch's legacy, non-zip format cannot be mapped and is
    loaded whole, once). Iteration follows the file's order, as ``load_file`` / ``torch.load`` do.

    Raises
    ------
    WeightcodecError
        If the file is missing, unreadable, or not a state_dict of tensors.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = _check_state_dict_path(Path(path))
        self._whole: dict[str, torch.Tensor] | None = None  # a legacy .pt file, loaded once
        if self.path.suffix == ".safetensors":
            with self._safe_open() as f:
                slices = {name: f.get_slice(name) for name in f.offset_keys()}
                self.specs = {
                    name: _meta_tensor(SAFETENSORS_DTYPES.get(s.get_dtype()), s.get_shape()) for name, s in slices.items()
                }
        else:
            state = self._load_pt()
            self.specs = {name: _meta_tensor(t.dtype, t.shape) for name, t in state.items()}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.specs:
            raise KeyError(name)
        if self.path.suffix == ".safetensors":
            with self._safe_open() as f:
                return f.get_tensor(name)
        return self._load_pt()[name]  # keeps the mapping alive only as long as the tensor lives

    def __iter__(self) -> Iterator[str]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def _safe_open(self):
        from safetensors import safe_open

        try:
            return safe_open(str(self.path), framework="pt")
        except Exception as exc:  # safetensors raises its own error types
            raise WeightcodecError(f"{self.path}: not a readable .safetensors file: {exc}") from None

    def _load_pt(self) -> dict[str, torch.Tensor]:
        """The file's state_dict, its tensors backed by a private mapping of the file where torch allows."""
        if self._whole is not None:
            return self._whole
        try:
            obj = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise WeightcodecError(_pt_load_error(self.path, exc)) from None
            self._whole = _as_state_dict(_torch_load(self.path), self.path)  # legacy format: no mapping
            return self._whole
        except Exception as exc:
            raise WeightcodecError(_pt_load_error(self.path, exc)) from None
        return _as_state_dict(obj, self.path)


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightcodecError(_pt_load_error(path, exc)) from None


def _check_state_dict_path(path: Path) -> Path:
    """``path``, after checking that it is a non-empty file (a clear error otherwise)."""
    if path.is_dir():
        raise WeightcodecError(f"{path}: is a directory, expected a state_dict file ({STATE_DICT_KINDS})")
    if not path.is_file():
        raise WeightcodecError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise WeightcodecError(f"{path}: the file is empty (0 bytes), expected a state_dict file ({STATE_DICT_KINDS})")
    return path


def _pt_load_error(path: Path, exc: Exception) -> str:
    if isinstance(exc, pickle.UnpicklingError):  # weights_only refused a pickled object: a whole model, most likely
        return (
            f"{path}: cannot load as a state_dict with weights_only=True (it pickles objects other than "
            "tensors). If it holds a whole model saved with torch.save(model), re-save it with "
            "torch.save(model.state_dict(), path)"
        )
    # torch.load raises many types for files it cannot parse
    return (
        f"{path}: not a file torch.load can read ({type(exc).__name__}); expected a state_dict file "
        f"({STATE_DICT_KINDS})"
    )


def _meta_tensor(dtype: torch.dtype | None, shape) -> torch.Tensor:
    """A tensor with ``dtype`` and ``shape`` and no data (device ``meta``): a spec of a tensor."""
    if dtype is None:
        raise WeightcodecError(f"dtype not supported; supported: {sorted(TORCH_DTYPES)}")
    return torch.empty(tuple(shape), dtype=dtype, device="meta")


def _as_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightcodecError(
            f"{path}: expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}. "
            "Save one with torch.save(model.state_dict(), path)"
        )
    return dict(obj)


# ----------------------------------------------------------------------------- writing state_dict files


def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write ``state_dict`` as ``.safetensors`` or a PyTorch ``.pt``/``.pth`` file (by suffix), atomically."""
    specs = {name: _meta_tensor(t.dtype, t.shape) for name, t in state_dict.items()}
    write_state_dict(path, specs, lambda names: (state_dict[name] for name in names))


def write_state_dict(
    path: str | os.PathLike, specs: Mapping[str, torch.Tensor], produce: Callable[[list[str]], Iterable[torch.Tensor]]
) -> None:
    """Write a state_dict file atomically from tensors produced on demand, one at a time where the format allows.

    Parameters
    ----------
    path : str or os.PathLike
        ``.safetensors``, ``.pt`` or ``.pth``.
    specs : mapping of str to torch.Tensor
        Every tensor's dtype and shape, in state_dict order (``meta`` tensors will do).
    produce : callable
        ``produce(names)`` yields the tensors called ``names``, in that order.

    A ``.safetensors`` file is written tensor by tensor: its header (offsets follow from dtypes
    and shapes) first, then each tensor as ``produce`` yields it, so only one is held at a
    time; the bytes are those of ``safetensors.torch.save``. ``torch.save`` needs the whole
    state_dict, so for ``.pt`` every tensor is produced first; it is then written straight to
    the file, without an in-memory copy of the file.

    Raises
    ------
    WeightcodecError
        If the suffix is not one of :data:`STATE_DICT_SUFFIXES`, the folder is missing, or a
        produced tensor does not match its spec.
    """
    path = Path(path)
    if path.suffix not in STATE_DICT_SUFFIXES:
        raise WeightcodecError(f"{path}: cannot tell the file type from {path.suffix!r}; use one of {list(STATE_DICT_SUFFIXES)}")
    if path.suffix == ".safetensors":
        _write_safetensors(path, specs, produce)
        return
    names = list(specs)
    state = dict(zip(names, produce(names)))
    with container.atomic_writer(path) as fh:
        torch.save(state, fh)


def _write_safetensors(path: Path, specs: Mapping[str, torch.Tensor], produce) -> None:
    """The safetensors layout: 8-byte header length, JSON header padded with spaces to 8, tensor bytes.

    Tensors are laid out as ``safetensors`` does: by dtype rank (:data:`SAFETENSORS_RANK`)
    descending, then by name.
    """
    order = sorted(specs, key=lambda name: (-SAFETENSORS_RANK[DTYPE_NAMES[specs[name].dtype]], name))
    header, offset = {}, 0
    for name in order:
        spec = specs[name]
        nbytes = spec.numel() * spec.element_size()
        header[name] = {"dtype": SAFETENSORS_CODES[DTYPE_NAMES[spec.dtype]], "shape": list(spec.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with container.atomic_writer(path) as fh:
        fh.write(struct.pack("<Q", len(text)) + text)
        for name, tensor in zip(order, produce(order)):
            spec = specs[name]
            if tensor.dtype != spec.dtype or tuple(tensor.shape) != tuple(spec.shape):
                raise WeightcodecError(
                    f"tensor {name!r} is {tensor.dtype} {list(tensor.shape)}; expected {spec.dtype} {list(spec.shape)}"
                )
            fh.write(tensor_to_numpy(tensor).reshape(-1).view(np.uint8).data)
