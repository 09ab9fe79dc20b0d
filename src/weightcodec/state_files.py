"""State_dict files: reading the ones users bring, writing the ones a decode produces.

Reading: ``.safetensors`` (with ``safetensors``) and PyTorch ``.pt``/``.pth`` files (with
``torch.load(weights_only=True)``), whole or one tensor at a time. Writing
(:func:`write_state_dict`): the file is laid out first, by the format's own writer, and each
tensor is then filled in place through a memory map of its bytes in the file, so a decoder
writes its output once, straight into the file, without a copy of the tensor in memory.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import pickle
import struct
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Mapping, NamedTuple

import numpy as np
import torch

from . import container
from .errors import WeightcodecError
from .tensors import DTYPE_NAMES, TORCH_DTYPES

__all__ = [
    "STATE_DICT_SUFFIXES",
    "load_state_dict",
    "StateDictFile",
    "save_state_dict",
    "write_state_dict",
    "StateDictWriter",
]

#: safetensors' name of each dtype, and its rank: a file lays tensors out by rank descending, then name.
SAFETENSORS_CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64",
                     "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}
SAFETENSORS_RANK = {"bool": 0, "uint8": 1, "int8": 2, "int16": 5, "float16": 7, "bfloat16": 8, "int32": 9,
                    "float32": 11, "float64": 12, "int64": 13}
SAFETENSORS_DTYPES = {code: TORCH_DTYPES[name] for name, code in SAFETENSORS_CODES.items()}
#: File types :func:`save_state_dict` writes: safetensors, or a PyTorch pickle of tensors only.
STATE_DICT_SUFFIXES = (".pt", ".pth", ".safetensors")
STATE_DICT_KINDS = "a .pt/.pth written by torch.save(model.state_dict(), path), or a .safetensors file"
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # a zip local file header (30 bytes): signature .. name and extra lengths
_CENTRAL_HEADER = struct.Struct("<4s6H3L5H2L")  # a zip central directory entry (46 bytes)
_CRC_IN_LOCAL, _CRC_IN_CENTRAL = 14, 16  # where a record's CRC-32 sits in each
_HAS_DATA_DESCRIPTOR = 0x08  # general-purpose flag: the CRC-32 and sizes follow the data (torch.save sets it)
_DESCRIPTOR_SIGNATURE = b"PK\x07\x08"


# ----------------------------------------------------------------------------- reading state_dict files


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
    """Write ``state_dict`` as ``.safetensors`` or a PyTorch ``.pt``/``.pth`` file (by suffix), atomically.

    The bytes are those of ``safetensors.torch.save`` or of ``torch.save`` (which keeps tied
    tensors tied); :func:`write_state_dict` writes the same ``.safetensors`` bytes tensor by tensor.
    """
    path = _check_suffix(Path(path))
    if path.suffix != ".safetensors":
        with container.atomic_writer(path) as fh:
            torch.save(dict(state_dict), fh)
        return
    specs = {name: _meta_tensor(t.dtype, t.shape) for name, t in state_dict.items()}
    with write_state_dict(path, specs) as writer:
        for name, tensor in state_dict.items():
            writer.fill(name, lambda target, tensor=tensor: target.copy_(tensor))


@contextlib.contextmanager
def write_state_dict(path: str | os.PathLike, specs: Mapping[str, torch.Tensor]) -> Iterator[StateDictWriter]:
    """Lay out a state_dict file, let the caller fill each tensor in place, then commit it atomically.

    Parameters
    ----------
    path : str or os.PathLike
        ``.safetensors``, ``.pt`` or ``.pth``.
    specs : mapping of str to torch.Tensor
        Every tensor's dtype and shape, in state_dict order (``meta`` tensors will do).

    Yields
    ------
    StateDictWriter
        ``writer.fill(name, write)`` hands ``write`` the tensor ``name`` mapped onto its bytes
        in the file; threads may fill different tensors at once.

    The layout is the format's own. ``.safetensors``: the header ``safetensors`` writes, so
    the filled file has the bytes of ``safetensors.torch.save``. ``.pt``: the archive
    ``torch.save`` writes when told to leave the tensors' bytes for later
    (``torch.serialization.skip_data``); each tensor's CRC-32 is set in the archive once it is
    filled, so the file is a valid zip that ``torch.load`` reads: every byte before its last
    record is that of a plain ``torch.save``, and the last, torch's serialization id, differs
    (torch derives it from the CRCs it saw). Room for the
    whole file is reserved before anything is mapped, so a full disk is a clean error rather
    than a crash on a mapped write, and each tensor is mapped only while it is filled.

    Raises
    ------
    WeightcodecError
        If the suffix is not one of :data:`STATE_DICT_SUFFIXES`, the folder is missing, the
        disk has no room, or a tensor was not filled by the end of the block. Nothing is left
        at ``path`` then, nor if the block raises.
    """
    path = _check_suffix(Path(path))
    with container.atomic_writer(path) as fh:
        regions = _lay_out_safetensors(fh, specs) if path.suffix == ".safetensors" else _lay_out_pt(fh, specs)
        _reserve(fh, path)
        writer = StateDictWriter(fh.fileno(), specs, regions, path)
        yield writer
        writer.finish()


class _Region(NamedTuple):
    """Where a tensor's bytes are in the file, and where its CRC-32 goes (``.pt``; none for ``.safetensors``)."""

    offset: int
    nbytes: int
    crc_at: tuple[int, ...] = ()


class StateDictWriter:
    """The tensors of a state_dict file being written by :func:`write_state_dict`, filled in place."""

    def __init__(self, fd: int, specs: Mapping[str, torch.Tensor], regions: Mapping[str, _Region], path: Path):
        self._fd, self._specs, self._regions, self._path = fd, specs, regions, path
        self._crcs: dict[str, int] = {}

    def fill(self, name: str, write: Callable[[torch.Tensor], object]) -> None:
        """Call ``write(target)``, ``target`` being tensor ``name`` (its spec's dtype and shape) mapped onto the file.

        ``write`` must set every element of ``target``. The file is unmapped when ``write``
        returns, or later if ``target`` is still referenced then (never under a live view).
        """
        if name not in self._specs:
            raise WeightcodecError(f"no tensor {name!r} in the file being written; it holds {list(self._specs)}")
        spec, region = self._specs[name], self._regions[name]
        if region.nbytes == 0:
            write(torch.empty(spec.shape, dtype=spec.dtype))
            self._crcs[name] = 0
            return
        start = region.offset - region.offset % mmap.ALLOCATIONGRANULARITY
        skip = region.offset - start
        try:
            mapped = mmap.mmap(self._fd, skip + region.nbytes, offset=start)
        except OSError as exc:  # a file system that cannot map files
            raise WeightcodecError(f"{self._path}: cannot map the file to write {name!r} into it: {exc.strerror or exc}") from None
        data = np.frombuffer(mapped, np.uint8, region.nbytes, skip)  # holds the map open while it lives
        try:
            write(torch.from_numpy(data).view(spec.dtype).view(spec.shape))
            self._crcs[name] = zlib.crc32(data) if region.crc_at else 0
        finally:
            del data
            with contextlib.suppress(BufferError):  # a view still alive (a traceback's frames) keeps it open
                mapped.close()

    def finish(self) -> None:
        """Check that every tensor was filled, then write the CRCs the archive records (``.pt``)."""
        missing = [name for name in self._specs if name not in self._crcs]
        if missing:
            raise WeightcodecError(f"{len(missing)} tensors were not written: {', '.join(missing[:5])}")
        for name, region in self._regions.items():
            for at in region.crc_at:
                os.pwrite(self._fd, struct.pack("<L", self._crcs[name]), at)


def _lay_out_safetensors(fh: BinaryIO, specs: Mapping[str, torch.Tensor]) -> dict[str, _Region]:
    """Write the safetensors header; the regions of the tensors that follow it.

    The layout is ``safetensors``': an 8-byte header length, the JSON header padded with
    spaces to 8 bytes, then the tensors by dtype rank (:data:`SAFETENSORS_RANK`) descending,
    then by name.
    """
    order = sorted(specs, key=lambda name: (-SAFETENSORS_RANK[DTYPE_NAMES[specs[name].dtype]], name))
    header, spans, offset = {}, {}, 0
    for name in order:
        spec = specs[name]
        nbytes = spec.numel() * spec.element_size()
        header[name] = {"dtype": SAFETENSORS_CODES[DTYPE_NAMES[spec.dtype]], "shape": list(spec.shape),
                        "data_offsets": [offset, offset + nbytes]}
        spans[name] = (offset, nbytes)
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    fh.write(struct.pack("<Q", len(text)) + text)
    fh.truncate(8 + len(text) + offset)
    return {name: _Region(8 + len(text) + start, nbytes) for name, (start, nbytes) in spans.items()}


def _lay_out_pt(fh: BinaryIO, specs: Mapping[str, torch.Tensor]) -> dict[str, _Region]:
    """Let ``torch.save`` write the archive without the tensors' bytes; the regions of its data records.

    ``torch.save`` names the storages ``data/0``, ``data/1``... in the order it meets them,
    the state_dict's order; each record's size is checked against its tensor's.
    """
    placeholders = {name: torch.empty(spec.shape, dtype=spec.dtype) for name, spec in specs.items()}  # never touched
    with torch.serialization.skip_data():
        torch.save(placeholders, fh)
    fh.flush()
    with zipfile.ZipFile(fh) as archive:  # a passed-in file stays open
        infos, central = archive.infolist(), _central_entries(fh, archive)
    records = {info.filename.partition("/")[2]: (info, at) for info, at in zip(infos, central)}
    regions = {}
    for key, (name, spec) in enumerate(specs.items()):
        info, central_at = records[f"data/{key}"]
        fh.seek(info.header_offset)
        local = _LOCAL_HEADER.unpack(fh.read(_LOCAL_HEADER.size))
        nbytes = spec.numel() * spec.element_size()
        if local[0] != b"PK\x03\x04" or info.file_size != nbytes or info.compress_type != zipfile.ZIP_STORED:
            raise WeightcodecError(f"torch.save laid out tensor {name!r} as no torch version tested here does")
        offset = info.header_offset + _LOCAL_HEADER.size + local[-2] + local[-1]
        regions[name] = _Region(offset, nbytes, (_local_crc_at(fh, info, offset + nbytes), central_at + _CRC_IN_CENTRAL))
    return regions


def _local_crc_at(fh: BinaryIO, info: zipfile.ZipInfo, data_end: int) -> int:
    """Where a record's CRC-32 sits next to its data: in the data descriptor after it if it has one, else in its local header."""
    if not info.flag_bits & _HAS_DATA_DESCRIPTOR:
        return info.header_offset + _CRC_IN_LOCAL
    fh.seek(data_end)
    return data_end + (len(_DESCRIPTOR_SIGNATURE) if fh.read(4) == _DESCRIPTOR_SIGNATURE else 0)  # the signature is optional


def _central_entries(fh: BinaryIO, archive: zipfile.ZipFile) -> list[int]:
    """The file offset of each central directory entry, in the order of ``archive.infolist()``."""
    offsets, at = [], archive.start_dir
    for _ in archive.infolist():
        fh.seek(at)
        entry = _CENTRAL_HEADER.unpack(fh.read(_CENTRAL_HEADER.size))
        if entry[0] != b"PK\x01\x02":
            raise WeightcodecError("torch.save wrote a zip central directory this weightcodec cannot read")
        offsets.append(at)
        at += _CENTRAL_HEADER.size + entry[10] + entry[11] + entry[12]  # name, extra field, comment
    return offsets


def _reserve(fh: BinaryIO, path: Path) -> None:
    """Give the file's holes disk blocks now: a write through a map to a full disk would kill the process."""
    fh.flush()
    size = os.fstat(fh.fileno()).st_size
    if size == 0 or not hasattr(os, "posix_fallocate"):  # not on macOS: its holes stay sparse
        return
    try:
        os.posix_fallocate(fh.fileno(), 0, size)
    except OSError as exc:
        raise WeightcodecError(f"{path}: cannot reserve {size:,} bytes: {exc.strerror or exc}") from None


def _check_suffix(path: Path) -> Path:
    if path.suffix not in STATE_DICT_SUFFIXES:
        raise WeightcodecError(f"{path}: cannot tell the file type from {path.suffix!r}; use one of {list(STATE_DICT_SUFFIXES)}")
    return path
