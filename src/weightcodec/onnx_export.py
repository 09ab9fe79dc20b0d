"""Write the weights of a ``.wcz`` file into a user's ONNX graph, so the result runs anywhere.

The graph's structure comes from the user's own export (``torch.onnx.export``); this module only
replaces its initializers by the decoded weights, matched by name (PyTorch's exporter names them
after the state_dict keys). A tensor is written as a ``sparse_initializer`` (its non-zero values
plus their int64 flat indices) when that is smaller than the dense initializer, which is the
case for pruned layers below about ``itemsize / (itemsize + 8)`` density (a third for float32).

Requires the ``onnx`` package (``pip install 'weightcodec[onnx]'``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from . import container, tensors
from .codecs import raw
from .errors import WeightcodecError

__all__ = ["INDEX_BYTES", "export_onnx"]

INDEX_BYTES = 8  # sparse initializer indices are int64 (flat positions)


def _onnx():
    try:
        import onnx
    except ImportError:
        raise WeightcodecError("ONNX output needs the onnx package: pip install 'weightcodec[onnx]'") from None
    return onnx


def _torch_dtypes(onnx) -> dict[int, torch.dtype]:
    """ONNX element types this module can write, mapped to the torch dtype holding their bytes."""
    kinds = onnx.TensorProto
    return {
        kinds.FLOAT: torch.float32,
        kinds.FLOAT16: torch.float16,
        kinds.BFLOAT16: torch.bfloat16,
        kinds.DOUBLE: torch.float64,
        kinds.INT64: torch.int64,
        kinds.INT32: torch.int32,
        kinds.INT16: torch.int16,
        kinds.INT8: torch.int8,
        kinds.UINT8: torch.uint8,
        kinds.BOOL: torch.bool,
    }


def export_onnx(
    wcz: container.WczFile, model_path: str | os.PathLike, out_path: str | os.PathLike, *, max_bytes: int | None = None
) -> list[str]:
    """Write ``model_path`` with its initializers replaced by the tensors of ``wcz`` to ``out_path``.

    Parameters
    ----------
    wcz : weightcodec.container.WczFile
        The parsed ``.wcz`` file.
    model_path : str or os.PathLike
        The user's ONNX model whose initializers are named like the state_dict keys.
    out_path : str or os.PathLike
        Where to write the new model (atomically; nothing is written if anything fails).
    max_bytes : int, optional
        Memory budget of the decoded tensors, as for :func:`weightcodec.load`.

    Returns
    -------
    list of str
        Names of raw-stored tensors the graph has no initializer for (batch-norm counters and
        the like, which exporters usually drop).

    Raises
    ------
    WeightcodecError
        If the model cannot be read, a compressed tensor has no initializer of that name (its
        weights would silently stay uncompressed), shapes differ, an element type is not
        supported, or the result fails ``onnx.checker``.
    """
    onnx = _onnx()
    model = _load_model(onnx, Path(model_path))
    state = tensors.decode_file(wcz, max_bytes=max_bytes)
    found = _initializers(model.graph)
    compressed = {r.name for r in wcz.records if r.encoded.codec != raw.NAME}
    missing = [name for name in compressed if name not in found]
    if missing:
        raise WeightcodecError(
            f"{model_path}: no initializer named {sorted(missing)}; export the model with "
            "torch.onnx.export(..., do_constant_folding=False) so initializers keep the state_dict names"
        )
    dense, sparse = [], []
    for name, proto in found.items():
        if name not in state:
            (dense if isinstance(proto, onnx.TensorProto) else sparse).append(proto)
            continue
        new = _initializer(onnx, name, state[name], _dims_and_type(onnx, proto), model_path)
        (dense if isinstance(new, onnx.TensorProto) else sparse).append(new)
    del model.graph.initializer[:]
    del model.graph.sparse_initializer[:]
    model.graph.initializer.extend(dense)
    model.graph.sparse_initializer.extend(sparse)
    try:
        onnx.checker.check_model(model)
        data = model.SerializeToString()
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise WeightcodecError(f"{out_path}: the ONNX model with the new weights is invalid: {exc}") from None
    container.atomic_write_bytes(Path(out_path), data)
    return [name for name in state if name not in found]


def _load_model(onnx, path: Path):
    if not path.is_file():
        raise WeightcodecError(f"{path}: no such file")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError and friends share no useful base class
        raise WeightcodecError(f"{path}: not a readable ONNX model: {type(exc).__name__}: {exc}") from None


def _initializers(graph) -> dict[str, object]:
    """Every initializer of the graph, dense (TensorProto) or sparse (SparseTensorProto), by name."""
    found = {init.name: init for init in graph.initializer}
    found.update({init.values.name: init for init in graph.sparse_initializer})
    return found


def _dims_and_type(onnx, proto) -> tuple[tuple[int, ...], int]:
    if isinstance(proto, onnx.SparseTensorProto):
        return tuple(proto.dims), proto.values.data_type
    return tuple(proto.dims), proto.data_type


def _initializer(onnx, name: str, tensor: torch.Tensor, dims_and_type, model_path):
    """``tensor`` as a dense or a sparse initializer of the graph's element type, whichever is smaller."""
    dims, data_type = dims_and_type
    if tuple(tensor.shape) != dims:
        raise WeightcodecError(
            f"{model_path}: initializer {name!r} has shape {list(dims)}, the file's tensor {list(tensor.shape)}"
        )
    dtype = _torch_dtypes(onnx).get(data_type)
    if dtype is None:
        raise WeightcodecError(
            f"{model_path}: initializer {name!r} has ONNX type "
            f"{onnx.TensorProto.DataType.Name(data_type)}, not one of "
            f"{sorted(onnx.TensorProto.DataType.Name(t) for t in _torch_dtypes(onnx))}"
        )
    flat = tensor.to(dtype).flatten()
    positions = torch.nonzero(flat).flatten()
    itemsize = flat.element_size()
    if positions.numel() * (itemsize + INDEX_BYTES) < flat.numel() * itemsize:
        values = _tensor_proto(onnx, name, flat[positions], data_type)
        indices = _tensor_proto(onnx, "", positions.to(torch.int64), onnx.TensorProto.INT64)
        return onnx.helper.make_sparse_tensor(values, indices, list(dims))
    return _tensor_proto(onnx, name, tensor.to(dtype), data_type)


def _tensor_proto(onnx, name: str, tensor: torch.Tensor, data_type: int):
    array = tensors.tensor_to_numpy(tensor)  # bfloat16 as its uint16 bit pattern, as ONNX stores it
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)  # ONNX raw_data is little-endian
    return onnx.helper.make_tensor(name, data_type, list(tensor.shape), little.tobytes(), raw=True)
