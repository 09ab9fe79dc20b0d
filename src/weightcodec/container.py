"""The ``.wcz`` container: a 20-byte preamble, a header (:mod:`weightcodec.header`), then checksummed raw sections.

The exact layout is specified in ``docs/format.md``; this module and :mod:`weightcodec.header` are its
only implementation.
It knows nothing about training or torch: it stores :class:`~weightcodec.codecs.Encoded`
tensors under names and gives NumPy arrays back, decoding each with the codec named in the file.

Reading trusts nothing: lengths and offsets are checked against the file size before any
allocation, every section's CRC-32 is verified before it is decoded, and no code from the file
is ever executed. A few header bytes may claim a huge tensor, so decoding is bounded by a
memory budget (``max_bytes``, by default the memory available): the declared output sizes of
all tensors are summed and checked against it before anything is decoded.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Mapping

import numpy as np

from .codecs import Encoded, alias, get_codec, raw
from .errors import CorruptFileError, FormatError, MemoryBudgetError, WeightcodecError
from .header import MAX_HEADER_BYTES, clip, decode_header, encode_header, is_text

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
    "atomic_writer",
    "check_writable",
    "available_memory",
    "decoded_nbytes",
    "check_budget",
]

MAGIC = b"\x89WCZ\r\n\x1a\n"
VERSION = (2, 0)  # written; majors 1 and 2 are read (docs/format.md, "Versioning")
PREAMBLE = struct.Struct("<8sHHII")  # magic, version_major, version_minor, header_length, header_crc32
CRC_OFFSET = 16  # the header CRC covers preamble bytes 0..15 and then the header
MAX_DIMS = 8
MAX_ELEMENTS = 2**40
DECODED_ITEMSIZE = 4  # codecs other than raw decode to float32
# How a user raises the decoding budget, named in the error that refuses a file.
BUDGET_OPTIONS = "`weightcodec decode --max-memory SIZE` or `weightcodec.load(path, max_bytes=...)`"
# Exceptions a codec may raise on data it was not written to handle; reported as corruption.
CODEC_DATA_ERRORS = (KeyError, ValueError, TypeError, IndexError, ArithmeticError)
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
    # name -> record: finding a tensor costs O(1), so decoding n tensors costs O(n)
    index: dict[str, TensorRecord] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "index", {rec.name: rec for rec in self.records})

    @property
    def decoded_bytes(self) -> int:
        """Bytes of all decoded tensors, as the header declares them (:func:`decoded_nbytes`)."""
        return sum(decoded_nbytes(rec) for rec in self.records)

    def check_budget(self, max_bytes: int | None = None) -> None:
        """Refuse the file if decoding all its tensors would exceed ``max_bytes`` (see :func:`check_budget`)."""
        check_budget(self.records, max_bytes)

    def decode(self, name: str, *, max_bytes: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """Decode one tensor to a NumPy array (raw dtype for ``raw``, float32 otherwise).

        ``out``, for a float32 tensor: where to write it (see :func:`decode_record`).

        Raises
        ------
        MemoryBudgetError
            If the tensor's decoded size exceeds ``max_bytes`` (default: the memory available).
        CorruptFileError, FormatError
            If its data cannot be decoded.
        """
        record = self.record(name)
        if record.encoded.codec == alias.NAME:
            return self.decode(alias.target(record.encoded.meta), max_bytes=max_bytes, out=out)
        check_budget([record], max_bytes)
        return decode_record(record, out)

    def describe(self, name: str, *, measure: bool = True) -> dict:
        """The codec's figures for ``inspect`` (its ``describe``); ``measure=False`` decodes nothing."""
        record = self.record(name)
        encoded = record.encoded
        codec = get_codec(encoded.codec)
        return _codec_call(record, lambda: codec.describe(encoded.meta, encoded.sections, record.shape, measure=measure))

    def record(self, name: str) -> TensorRecord:
        """The record called ``name``; the error lists the available names."""
        try:
            return self.index[name]
        except KeyError:
            raise KeyError(f"no tensor {name!r} in file; it holds {list(self.index)}") from None

    def arrays(self, *, max_bytes: int | None = None) -> dict[str, np.ndarray]:
        """Decode every tensor, in file order, after checking the whole file against the budget."""
        check_budget(self.records, max_bytes)
        arrays: dict[str, np.ndarray] = {}
        for rec in self.records:
            is_alias = rec.encoded.codec == alias.NAME  # its target is an earlier record (checked on reading)
            arrays[rec.name] = arrays[alias.target(rec.encoded.meta)] if is_alias else decode_record(rec)
        return arrays


def decode_record(record: TensorRecord, out: np.ndarray | None = None) -> np.ndarray:
    """Decode one record with its codec; any failure on its data is a :class:`CorruptFileError`.

    With ``out`` (a writable C-contiguous float32 array of the tensor's shape, for a codec that
    decodes to float32), the values are written there and ``out`` is returned: in place by a
    codec with ``decode_into`` (no other array of the tensor's size), copied in otherwise.
    The caller bounds its memory first (:func:`check_budget`).

    Raises
    ------
    WeightcodecError
        If ``out`` is given for a ``raw`` tensor, or is not such an array.
    """
    encoded = record.encoded
    codec = get_codec(encoded.codec)
    if out is None:
        array = _codec_call(record, lambda: codec.decode(encoded.meta, encoded.sections, record.shape))
        if tuple(array.shape) != record.shape:
            raise CorruptFileError(f"tensor {record.name!r} decoded to shape {array.shape}, header says {record.shape}")
        return array
    _check_out(record, out)
    if not hasattr(codec, "decode_into"):
        out[...] = decode_record(record)
        return out
    _codec_call(record, lambda: codec.decode_into(encoded.meta, encoded.sections, record.shape, out.reshape(-1)))
    return out


def _check_out(record: TensorRecord, out: np.ndarray) -> None:
    """Refuse an ``out`` that :func:`decode_record` cannot write ``record`` into (a caller's mistake, not the file's)."""
    if record.encoded.codec == raw.NAME:
        raise WeightcodecError(f"tensor {record.name!r} is raw {record.dtype}: it decodes to its own bytes, not into out")
    flags = out.flags
    if out.dtype != np.float32 or tuple(out.shape) != record.shape or not flags.c_contiguous or not flags.writeable:
        raise WeightcodecError(
            f"out for tensor {record.name!r} must be a writable C-contiguous float32 array of shape "
            f"{list(record.shape)}, got {out.dtype} {list(out.shape)}"
        )


def _codec_call(record: TensorRecord, call):
    """``call()``, with what a codec raises on bad data turned into errors that name the tensor."""
    try:
        return call()
    except WeightcodecError:
        raise
    except MemoryError:
        raise MemoryBudgetError(
            f"tensor {record.name!r} of shape {list(record.shape)} does not fit in the memory available to decode it"
        ) from None
    except CODEC_DATA_ERRORS as exc:
        raise CorruptFileError(f"tensor {record.name!r}: cannot decode {record.encoded.codec} data: {exc}") from exc


def decoded_nbytes(record: TensorRecord) -> int:
    """Bytes of the array ``record`` decodes to, from its header entry alone.

    A raw tensor decodes to a copy of its data section; every other codec to float32 of the
    tensor's shape, however few bytes it stores (an all-zero layer of 2^40 elements is a
    valid file of a few hundred bytes).
    """
    if record.encoded.codec == raw.NAME:
        return sum(len(data) for data in record.encoded.sections.values())
    if record.encoded.codec == alias.NAME:
        return 0  # decodes to its target's array, shared
    return math.prod(record.shape) * DECODED_ITEMSIZE


def check_budget(records: Iterable[TensorRecord], max_bytes: int | None = None) -> None:
    """Refuse to decode ``records`` together if their decoded bytes exceed ``max_bytes``.

    Parameters
    ----------
    records : iterable of TensorRecord
        The tensors to be decoded and kept together.
    max_bytes : int, optional
        The budget; None means :func:`available_memory` (no bound where the platform does not
        say), which a normal model never reaches.

    Raises
    ------
    MemoryBudgetError
        Naming the bytes needed, the largest tensors, the budget and the option that raises it.
    """
    records = list(records)
    needed = sum(decoded_nbytes(rec) for rec in records)
    budget = available_memory() if max_bytes is None else max_bytes
    if budget is None or needed <= budget:
        return
    largest = sorted(records, key=decoded_nbytes, reverse=True)[:3]
    shown = ", ".join(f"{rec.name!r} {list(rec.shape)} {_size(decoded_nbytes(rec))}" for rec in largest)
    source = "the memory available" if max_bytes is None else "max_bytes"
    raise MemoryBudgetError(
        f"decoding {len(records)} tensor{'s' if len(records) != 1 else ''} needs {_size(needed)}, more than the budget of {_size(budget)} "
        f"({source}); largest: {shown}. If you trust this file and have the memory, raise the budget "
        f"with {BUDGET_OPTIONS}"
    )


def available_memory() -> int | None:
    """Bytes of memory available to this process now (Linux ``MemAvailable``), or None if unknown.

    Where ``/proc/meminfo`` is missing, the free physical pages (``os.sysconf``) are used.
    """
    try:
        with open("/proc/meminfo", "rb") as fh:
            for line in fh:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the value is in kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _size(nbytes: int) -> str:
    """``nbytes`` for a person: ``"3.0 GiB (3221225472 bytes)"``."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit} ({nbytes} bytes)"
    return f"{nbytes} bytes"


# ----------------------------------------------------------------------------- writing
#
# The header (which lists every section's offset and CRC) comes first in the file but is known
# only once every tensor is encoded. So that a file of any size is written in bounded memory,
# :func:`write` spools the sections to a temporary file as the records arrive, then writes the
# preamble and header to a second temporary file, appends the spool and renames it into place.
# :func:`to_bytes` lays out the same bytes in memory; both share the per-record and header steps.


def to_bytes(records: Iterable[TensorRecord], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise ``records`` into the bytes of a ``.wcz`` file (deterministic for equal input)."""
    layout, chunks = _Layout(metadata), []
    for rec in records:
        chunks.extend(layout.add(rec))
    return b"".join([layout.preamble_and_header(), *chunks])


def write(path: str | os.PathLike, records: Iterable[TensorRecord], metadata: Mapping[str, str] | None = None) -> int:
    """Write a ``.wcz`` file atomically, streaming; return its size in bytes.

    ``records`` may be any iterable (a generator that encodes one tensor at a time): each
    record's sections go to a temporary spool file in the target folder as it arrives, so only
    one record is held at a time. The bytes are those of :func:`to_bytes`. If anything fails
    (including the iterable raising), no file and no temporary file is left behind.
    """
    path = check_writable(path)
    layout = _Layout(metadata)
    with tempfile.TemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".spool") as spool:
        for rec in records:
            for data in layout.add(rec):
                spool.write(data)
        head = layout.preamble_and_header()
        spool.seek(0)
        with atomic_writer(path) as out:
            out.write(head)
            shutil.copyfileobj(spool, out, _COPY_BYTES)
    return len(head) + layout.offset


_COPY_BYTES = 1 << 20


class _Layout:
    """The header being built: one entry per record, section offsets counted as records arrive."""

    def __init__(self, metadata: Mapping[str, str] | None):
        self.metadata = dict(metadata or {})
        self.entries: list[dict] = []
        self.names: set[str] = set()
        self.offset = 0

    def add(self, rec: TensorRecord) -> list[bytes]:
        """Check ``rec``, add its header entry; return its sections' bytes, in file order."""
        _check_record(rec, self.names)
        self.names.add(rec.name)
        sections, chunks = [], []
        for sec_name, data in rec.encoded.sections.items():
            data = bytes(data)
            sections.append([sec_name, self.offset, len(data), zlib.crc32(data)])
            chunks.append(data)
            self.offset += len(data)
        self.entries.append(
            {
                "name": rec.name,
                "dtype": rec.dtype,
                "shape": list(rec.shape),
                "codec": rec.encoded.codec,
                "meta": rec.encoded.meta,
                "sections": sections,
            }
        )
        return chunks

    def preamble_and_header(self) -> bytes:
        """The 20-byte preamble and the header (:func:`~weightcodec.header.encode_header`) of every record added so far."""
        header = encode_header(self.metadata, self.entries)
        fixed = PREAMBLE.pack(MAGIC, VERSION[0], VERSION[1], len(header), 0)[:CRC_OFFSET]
        return fixed + struct.pack("<I", zlib.crc32(header, zlib.crc32(fixed))) + header


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename (:func:`atomic_writer`)."""
    with atomic_writer(path) as fh:
        fh.write(data)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file handle on a temporary file next to ``path``, renamed to ``path`` on success.

    Write as much as needed, as it is produced (no copy of the whole output in memory); if the
    ``with`` block raises, the temporary file is removed and ``path`` is untouched.

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
        with os.fdopen(fd, "w+b") as fh:
            yield fh
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


def _check_record(rec: TensorRecord, names: set[str]) -> None:
    """Refuse a record whose name is already in ``names`` or whose dtype the format cannot hold."""
    if rec.name in names:
        raise WeightcodecError(f"tensor names must be unique; repeated: {rec.name!r}")
    if rec.dtype not in DTYPES:
        raise WeightcodecError(f"unsupported dtype {rec.dtype!r} of tensor {rec.name!r}; supported: {list(DTYPES)}")


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
    """Parse the bytes of a ``.wcz`` file; raise :class:`FormatError` / :class:`CorruptFileError`.

    Sections are views of ``data`` (not copies): parsing costs memory in proportion to the
    header, whatever the tensors claim.
    """
    data = memoryview(data if isinstance(data, bytes) else bytes(data))
    major, header_len = _parse_preamble(data)
    header = decode_header(data[PREAMBLE.size : PREAMBLE.size + header_len], major)
    data_area = data[PREAMBLE.size + header_len :]
    records = _parse_tensors(header["tensors"], data_area)
    return WczFile(
        metadata=header["metadata"],
        records=tuple(records),
        file_bytes=len(data),
        header_bytes=PREAMBLE.size + header_len,
    )


def _parse_preamble(data: memoryview) -> tuple[int, int]:
    """The format's major version and the header length, after checking the header's CRC."""
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
    return major, header_len


def _parse_tensors(entries: list, data_area: memoryview) -> list[TensorRecord]:
    records, names, expected_offset = [], set(), 0
    for index, entry in enumerate(entries):
        name, dtype, shape, codec, meta, sections = _check_entry(index, entry)
        if name in names:
            raise CorruptFileError(f"corrupted header: tensor name {name!r} appears twice")
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
            chunk = data_area[offset : offset + length]
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
    _check_aliases(records)
    return records


def _check_aliases(records: list[TensorRecord]) -> None:
    """An alias has no sections and names an earlier tensor, not itself an alias, of its dtype and shape."""
    earlier: dict[str, TensorRecord] = {}
    for record in records:
        if record.encoded.codec == alias.NAME:
            target = earlier.get(alias.target(record.encoded.meta))
            if record.encoded.sections or target is None or target.encoded.codec == alias.NAME:
                raise CorruptFileError(
                    f"tensor {record.name!r}: an alias must have no sections and name an earlier tensor that is "
                    f"not an alias; it names {record.encoded.meta.get('target')!r}"
                )
            if (target.dtype, target.shape) != (record.dtype, record.shape):
                raise CorruptFileError(
                    f"tensor {record.name!r} ({record.dtype} {list(record.shape)}) is an alias of {target.name!r} "
                    f"({target.dtype} {list(target.shape)}); an alias has its target's dtype and shape"
                )
        earlier[record.name] = record


def _check_entry(index: int, entry: Any):
    if not isinstance(entry, dict):
        raise CorruptFileError(f"corrupted header: tensor entry {index} is not a JSON object")
    name, dtype, shape = entry.get("name"), entry.get("dtype"), entry.get("shape")
    codec, meta, sections = entry.get("codec"), entry.get("meta", {}), entry.get("sections")
    if not is_text(name) or not 1 <= len(name) <= 1024:
        raise CorruptFileError(f"corrupted header: tensor entry {index}: 'name' must be a string of 1..1024 characters")
    if dtype not in DTYPES:
        raise CorruptFileError(f"corrupted header: tensor {name!r}: dtype {clip(repr(dtype))} is not one of {list(DTYPES)}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        or math.prod(shape) > MAX_ELEMENTS
    ):
        raise CorruptFileError(
            f"corrupted header: tensor {name!r}: shape {clip(repr(shape))} must be a list of at most {MAX_DIMS} "
            f"non-negative ints with at most 2^40 elements"
        )
    if not isinstance(codec, str):
        raise CorruptFileError(f"corrupted header: tensor {name!r}: 'codec' must be a string")
    get_codec(codec)  # unknown codec -> FormatError naming it
    if not isinstance(meta, dict):
        raise CorruptFileError(f"corrupted header: tensor {name!r}: 'meta' must be a JSON object")
    if not isinstance(sections, list):
        raise CorruptFileError(f"corrupted header: tensor {name!r}: 'sections' must be a list")
    return name, dtype, tuple(shape), codec, meta, sections


def _check_section(name: str, sec: Any) -> tuple[str, int, int, int]:
    if (
        not isinstance(sec, list)
        or len(sec) != 4
        or not is_text(sec[0])
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in sec[1:])
        or sec[3] >= 2**32
    ):
        raise CorruptFileError(
            f"corrupted header: tensor {name!r}: section {clip(repr(sec))} must be [name, offset, length, crc32]"
        )
    return sec[0], sec[1], sec[2], sec[3]
