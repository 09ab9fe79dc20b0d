"""The ``.wcz`` container: a 20-byte preamble, a JSON header, then checksummed raw sections.

The exact layout is specified in ``docs/format.md``; this module is its only implementation.
It knows nothing about training or torch: it stores :class:`~weightcodec.codecs.Encoded`
tensors under names and gives NumPy arrays back, decoding each with the codec named in the file.

Reading trusts nothing: lengths and offsets are checked against the file size before any
allocation, every section's CRC-32 is verified before it is decoded, and no code from the file
is ever executed.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from .codecs import Encoded, get_codec, raw
from .errors import CorruptFileError, FormatError, WeightcodecError

__all__ = [
    "MAGIC",
    "VERSION",
    "TensorRecord",
    "WczFile",
    "to_bytes",
    "from_bytes",
    "write",
    "read",
    "atomic_write_bytes",
    "check_writable",
]

MAGIC = b"\x89WCZ\r\n\x1a\n"
VERSION = (1, 0)
PREAMBLE = struct.Struct("<8sHHII")  # magic, version_major, version_minor, header_length, header_crc32
CRC_OFFSET = 16  # the header CRC covers preamble bytes 0..15 and then the header
MAX_HEADER_BYTES = 64 * 1024 * 1024
MAX_TENSORS = 1_000_000
MAX_DIMS = 8
MAX_ELEMENTS = 2**40
DECODED_ITEMSIZE = 4  # codecs other than raw decode to float32
DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")


@dataclass(frozen=True)
class TensorRecord:
    """A named tensor as stored: its logical dtype and shape, and the codec output."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    encoded: Encoded

    @property
    def nbytes(self) -> int:
        """Payload bytes of this tensor (its sections)."""
        return self.encoded.nbytes


@dataclass(frozen=True)
class WczFile:
    """A parsed ``.wcz`` file: metadata, tensor records, and the size on disk."""

    metadata: dict[str, str]
    records: tuple[TensorRecord, ...]
    file_bytes: int
    header_bytes: int

    def decode(self, name: str) -> np.ndarray:
        """Decode one tensor to a NumPy array (raw dtype for ``raw``, float32 otherwise)."""
        record = self.record(name)
        codec = get_codec(record.encoded.codec)
        _check_decoded_size(record)
        try:
            array = codec.decode(record.encoded.meta, record.encoded.sections, record.shape)
        except WeightcodecError:
            raise
        except MemoryError:
            raise WeightcodecError(
                f"tensor {name!r} of shape {list(record.shape)} does not fit in the memory available to decode it"
            ) from None
        except (KeyError, ValueError, TypeError, IndexError, OverflowError) as exc:
            raise CorruptFileError(f"tensor {name!r}: cannot decode {record.encoded.codec} data: {exc}") from exc
        if tuple(array.shape) != record.shape:
            raise CorruptFileError(f"tensor {name!r} decoded to shape {array.shape}, header says {record.shape}")
        return array

    def record(self, name: str) -> TensorRecord:
        """The record called ``name``; the error lists the available names."""
        for rec in self.records:
            if rec.name == name:
                return rec
        raise KeyError(f"no tensor {name!r} in file; it holds {[r.name for r in self.records]}")

    def arrays(self) -> dict[str, np.ndarray]:
        """Decode every tensor, in file order."""
        return {rec.name: self.decode(rec.name) for rec in self.records}


def _check_decoded_size(record: TensorRecord) -> None:
    """Refuse a tensor whose decoded values would not fit in this machine's memory.

    A sparse codec can describe a huge tensor in a few bytes (an all-zero layer of 2^40
    elements is a valid file), so the decoded size is bounded here, before the codec allocates
    or loops over it. A raw tensor's bytes are in the file already and need no bound.
    """
    if record.encoded.codec == raw.NAME:
        return
    needed = math.prod(record.shape) * DECODED_ITEMSIZE
    available = _physical_memory()
    if available is not None and needed > available:
        raise WeightcodecError(
            f"tensor {record.name!r} of shape {list(record.shape)} decodes to {needed} bytes, "
            f"more than this machine's {available} bytes of memory"
        )


def _physical_memory() -> int | None:
    """Bytes of physical memory, or None where the platform does not say (then MemoryError decides)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


# ----------------------------------------------------------------------------- writing


def to_bytes(records: Iterable[TensorRecord], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise ``records`` into the bytes of a ``.wcz`` file (deterministic for equal input)."""
    records = list(records)
    _check_records(records)
    entries, chunks, offset = [], [], 0
    for rec in records:
        sections = []
        for sec_name, data in rec.encoded.sections.items():
            data = bytes(data)
            sections.append([sec_name, offset, len(data), zlib.crc32(data)])
            chunks.append(data)
            offset += len(data)
        entries.append(
            {
                "name": rec.name,
                "dtype": rec.dtype,
                "shape": list(rec.shape),
                "codec": rec.encoded.codec,
                "meta": rec.encoded.meta,
                "sections": sections,
            }
        )
    header_obj = {"metadata": dict(metadata or {}), "tensors": entries}
    header = json.dumps(header_obj, separators=(",", ":"), sort_keys=False, allow_nan=False).encode("utf-8")
    if len(header) > MAX_HEADER_BYTES:
        raise WeightcodecError(f"header is {len(header)} bytes; the format allows at most {MAX_HEADER_BYTES}")
    fixed = PREAMBLE.pack(MAGIC, VERSION[0], VERSION[1], len(header), 0)[:CRC_OFFSET]
    preamble = fixed + struct.pack("<I", zlib.crc32(header, zlib.crc32(fixed)))
    return b"".join([preamble, header, *chunks])


def write(path: str | os.PathLike, records: Iterable[TensorRecord], metadata: Mapping[str, str] | None = None) -> int:
    """Write a ``.wcz`` file atomically (temporary file, then rename); return its size in bytes.

    If anything fails, no file (and no partial file) is left at ``path``.
    """
    data = to_bytes(records, metadata)
    atomic_write_bytes(Path(path), data)
    return len(data)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    Raises
    ------
    WeightcodecError
        If the folder does not exist or is not writable, or ``path`` is a folder; nothing is
        left behind.
    """
    path = check_writable(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    except OSError as exc:
        raise WeightcodecError(f"{path}: cannot write: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        # mkstemp creates the file private (0600); give it the mode a plain open() would have
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path: str | os.PathLike) -> Path:
    """``path`` as a Path, after checking that a file can be created there (its folder exists).

    Call it before long work whose result goes to ``path``, to fail early.

    Raises
    ------
    WeightcodecError
        If ``path`` is a folder or its folder does not exist.
    """
    path = Path(path)
    if path.is_dir():
        raise WeightcodecError(f"{path}: is a directory, expected a file name")
    if not path.parent.is_dir():
        raise WeightcodecError(f"{path}: cannot write: folder {path.parent} does not exist")
    return path


def _check_records(records: list[TensorRecord]) -> None:
    names = [r.name for r in records]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise WeightcodecError(f"tensor names must be unique; repeated: {duplicates}")
    bad_dtypes = [(r.name, r.dtype) for r in records if r.dtype not in DTYPES]
    if bad_dtypes:
        raise WeightcodecError(f"unsupported dtypes {bad_dtypes}; supported: {list(DTYPES)}")


# ----------------------------------------------------------------------------- reading


def read(path: str | os.PathLike) -> WczFile:
    """Read and validate a ``.wcz`` file (sections are checked; tensors decode on demand)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise WeightcodecError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise WeightcodecError(f"{path}: is a directory, expected a .wcz file") from None
    except OSError as exc:
        raise WeightcodecError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return from_bytes(data)
    except FormatError as exc:  # name the file: the user may have passed several
        raise type(exc)(f"{path}: {exc}") from None


def from_bytes(data: bytes) -> WczFile:
    """Parse the bytes of a ``.wcz`` file; raise :class:`FormatError` / :class:`CorruptFileError`."""
    data = memoryview(bytes(data))
    header_len = _parse_preamble(data)
    header_bytes = bytes(data[PREAMBLE.size : PREAMBLE.size + header_len])
    header = _parse_header(header_bytes)
    data_area = data[PREAMBLE.size + header_len :]
    records = _parse_tensors(header["tensors"], data_area)
    return WczFile(
        metadata=header["metadata"],
        records=tuple(records),
        file_bytes=len(data),
        header_bytes=PREAMBLE.size + header_len,
    )


def _parse_preamble(data: memoryview) -> int:
    if len(data) == 0:
        raise FormatError("the file is empty (0 bytes), not a .wcz file")
    if len(data) < len(MAGIC) or bytes(data[: len(MAGIC)]) != MAGIC:
        raise FormatError("not a .wcz file (wrong magic bytes)")
    if len(data) < PREAMBLE.size:
        raise CorruptFileError(f"file is truncated: {len(data)} bytes, the preamble alone needs {PREAMBLE.size}")
    _, major, minor, header_len, header_crc = PREAMBLE.unpack_from(data)
    if major > VERSION[0]:
        raise FormatError(
            f"file uses .wcz format {major}.{minor}, this weightcodec reads up to {VERSION[0]}.x; "
            "upgrade weightcodec to read it"
        )
    if major < 1:
        raise FormatError(f"file declares .wcz format {major}.{minor}, which does not exist")
    if not 2 <= header_len <= MAX_HEADER_BYTES:
        raise CorruptFileError(f"header length {header_len} is outside 2..{MAX_HEADER_BYTES}")
    if PREAMBLE.size + header_len > len(data):
        raise CorruptFileError(
            f"file is truncated: header needs {header_len} bytes, only {len(data) - PREAMBLE.size} follow"
        )
    if zlib.crc32(data[PREAMBLE.size : PREAMBLE.size + header_len], zlib.crc32(data[:CRC_OFFSET])) != header_crc:
        raise CorruptFileError("header checksum mismatch: the file is corrupted")
    return header_len


def _parse_header(header_bytes: bytes) -> dict[str, Any]:
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CorruptFileError(f"header is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), list):
        raise CorruptFileError("header must be a JSON object with a 'tensors' list")
    metadata = header.get("metadata", {})
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CorruptFileError("header 'metadata' must map strings to strings")
    if len(header["tensors"]) > MAX_TENSORS:
        raise CorruptFileError(f"header lists {len(header['tensors'])} tensors; the limit is {MAX_TENSORS}")
    header["metadata"] = metadata
    return header


def _parse_tensors(entries: list, data_area: memoryview) -> list[TensorRecord]:
    records, names, expected_offset = [], set(), 0
    for index, entry in enumerate(entries):
        name, dtype, shape, codec, meta, sections = _check_entry(index, entry)
        if name in names:
            raise CorruptFileError(f"tensor name {name!r} appears twice")
        names.add(name)
        section_bytes = {}
        for sec in sections:
            sec_name, offset, length, crc = _check_section(name, sec)
            if offset != expected_offset:
                raise CorruptFileError(
                    f"tensor {name!r} section {sec_name!r} starts at {offset}, expected {expected_offset} "
                    "(sections must be contiguous)"
                )
            if offset + length > len(data_area):
                raise CorruptFileError(
                    f"file is truncated: tensor {name!r} section {sec_name!r} ends at {offset + length}, "
                    f"data area has {len(data_area)} bytes"
                )
            chunk = bytes(data_area[offset : offset + length])
            if zlib.crc32(chunk) != crc:
                raise CorruptFileError(f"tensor {name!r} section {sec_name!r}: checksum mismatch, the file is corrupted")
            if sec_name in section_bytes:
                raise CorruptFileError(f"tensor {name!r} has two sections named {sec_name!r}")
            section_bytes[sec_name] = chunk
            expected_offset = offset + length
        records.append(TensorRecord(name, dtype, shape, Encoded(codec, meta, section_bytes)))
    if expected_offset != len(data_area):
        raise CorruptFileError(
            f"{len(data_area) - expected_offset} unexpected bytes after the last section (trailing data)"
        )
    return records


def _check_entry(index: int, entry: Any):
    if not isinstance(entry, dict):
        raise CorruptFileError(f"tensor entry {index} is not a JSON object")
    name, dtype, shape = entry.get("name"), entry.get("dtype"), entry.get("shape")
    codec, meta, sections = entry.get("codec"), entry.get("meta", {}), entry.get("sections")
    if not isinstance(name, str) or not 1 <= len(name) <= 1024:
        raise CorruptFileError(f"tensor entry {index}: 'name' must be a string of 1..1024 characters")
    if dtype not in DTYPES:
        raise CorruptFileError(f"tensor {name!r}: dtype {dtype!r} is not one of {list(DTYPES)}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        or math.prod(shape) > MAX_ELEMENTS
    ):
        raise CorruptFileError(
            f"tensor {name!r}: shape {shape!r} must be a list of at most {MAX_DIMS} non-negative ints "
            f"with at most 2^40 elements"
        )
    if not isinstance(codec, str):
        raise CorruptFileError(f"tensor {name!r}: 'codec' must be a string")
    get_codec(codec)  # unknown codec -> FormatError naming it
    if not isinstance(meta, dict):
        raise CorruptFileError(f"tensor {name!r}: 'meta' must be a JSON object")
    if not isinstance(sections, list):
        raise CorruptFileError(f"tensor {name!r}: 'sections' must be a list")
    return name, dtype, tuple(shape), codec, meta, sections


def _check_section(name: str, sec: Any) -> tuple[str, int, int, int]:
    if (
        not isinstance(sec, list)
        or len(sec) != 4
        or not isinstance(sec[0], str)
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in sec[1:])
        or sec[3] >= 2**32
    ):
        raise CorruptFileError(f"tensor {name!r}: section {sec!r} must be [name, offset, length, crc32]")
    return sec[0], sec[1], sec[2], sec[3]
