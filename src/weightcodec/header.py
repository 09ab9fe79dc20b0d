"""The ``.wcz`` header: its bytes to and from the metadata and the tensor entries, per format version.

``docs/format.md`` specifies both versions; :mod:`weightcodec.container` frames the header (the
preamble, its length and CRC) and checks every entry. Version 1.0 headers are plain JSON; 2.0
headers are the same information, packed for files of a few kilobytes, where the 1.0 header
was up to a twelfth of the file::

    1.0   UTF-8 JSON   {"metadata": {...}, "tensors": [{"name": "fc1.weight", "dtype": "float32",
                        "shape": [300, 784], "codec": "deep", "meta": {...},
                        "sections": [["codebook", 0, 256, 3735928559], ...]}, ...]}
    2.0   raw DEFLATE (RFC 1951, preset dictionary HEADER_DICTIONARY) of compact UTF-8 JSON
                       {"metadata": {...}, "tensors": [["fc1.weight", "float32", [300, 784], "deep",
                        {...}, [["codebook", 256, 3735928559], ...]], ...]}

A 2.0 tensor is a 6-element array instead of an object, and its sections drop their offsets:
they are contiguous, so each starts where the previous one ended. The preset dictionary holds
the strings most headers repeat (field values, codec and section names, meta keys), so even a
short header compresses; LeNet-5's shrinks from about 1,550 to under 300 bytes.

Both parse to the 1.0 form, entries as objects with offsets. JSON is read strictly: NaN,
infinities, numbers outside the float range, integers over 4,300 digits, repeated keys, lone
surrogates in strings and deep nesting are a :class:`~weightcodec.errors.CorruptFileError`
("corrupted header: ..."), never an internal error.
"""

from __future__ import annotations

import json
import math
import zlib
from collections import Counter
from typing import Any, Mapping

from .errors import CorruptFileError, WeightcodecError

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_TENSORS",
    "HEADER_DICTIONARY",
    "encode_header",
    "decode_header",
    "is_text",
    "clip",
]

MAX_HEADER_BYTES = 64 * 1024 * 1024  # stored header, and a 2.0 header once inflated
MAX_TENSORS = 1_000_000
# Reader limit (2.0): a header may inflate to at most 1 MiB plus this many bytes per stored byte;
# JSON headers compress about 3 to 10-fold, a DEFLATE bomb over 1000-fold.
MAX_INFLATION = 64
_FREE_INFLATION = 1 << 20
_RAW_DEFLATE = -15  # zlib wbits for a raw DEFLATE stream (no zlib header or trailer)
# Part of format 2.0: changing one byte changes every 2.0 header. Strings later in the
# dictionary are cheaper to refer to, so the most frequent come last.
HEADER_DICTIONARY = (
    '"bfloat16","float16","float64","int64","uint8","bool","<f2","<u2","<i8","|b1","bloomier","fuse",'
    '"segment":0,"k":3,"ans","running_mean","running_var","num_batches_tracked","features.","classifier.",'
    '"layer","conv2.","fc2.","fc3.","recipe":"{\\"rule\\":[{\\"clusters\\":32,\\"init\\":\\"linear\\",'
    '\\"match\\":\\"*\\",\\"method\\":\\"deep\\",\\"sparsity\\":0.9}],\\"training\\":{\\"hook\\":null}}",'
    '{"metadata":{"producer":"weightcodec 0.1.0","model":"lenet","method":"weightless","seed":"0"},"tensors":['
    '["conv1.weight","float32",[20,1,5,5],"weightless",{"filter":"ribbon","t":8,"K":16,"n":100,"seed":0,"m":128},'
    '[["codebook",64,1234567890],["table",100,1234567890]]],'
    '["fc1.bias","float32",[10],"raw",{"dtype":"<f4"},[["data",40,1234567890]]],'
    '["fc1.weight","float32",[300,784],"deep",{"index_bits":5,"entropy":"huffman","entries":100},'
    '[["codebook",64,1234567890],["gaps",100,1234567890],["codes",100,1234567890]]]]}'
).encode("ascii")


def encode_header(metadata: Mapping[str, str], entries: list[dict[str, Any]]) -> bytes:
    """The 2.0 header bytes of ``metadata`` and 1.0-form ``entries`` (sections with offsets).

    Deterministic for equal input with a given zlib (DEFLATE output is not specified across
    zlib versions; any zlib reads any of them).

    Raises
    ------
    WeightcodecError
        If the JSON exceeds :data:`MAX_HEADER_BYTES` (too many or too long names).
    """
    tensors = [
        [e["name"], e["dtype"], e["shape"], e["codec"], e["meta"], [[s[0], s[2], s[3]] for s in e["sections"]]]
        for e in entries
    ]
    text = json.dumps({"metadata": dict(metadata), "tensors": tensors}, separators=(",", ":"), allow_nan=False)
    text = text.encode("utf-8")
    if len(text) > MAX_HEADER_BYTES:
        raise WeightcodecError(f"header is {len(text)} bytes of JSON; the format allows at most {MAX_HEADER_BYTES}")
    packer = zlib.compressobj(9, zlib.DEFLATED, _RAW_DEFLATE, 9, zlib.Z_DEFAULT_STRATEGY, HEADER_DICTIONARY)
    return packer.compress(text) + packer.flush()


def decode_header(stored: bytes | memoryview, major: int) -> dict[str, Any]:
    """``{"metadata": dict, "tensors": list}`` from a version-``major`` header, entries in 1.0 form.

    Only the top level is checked here (an object with a ``tensors`` list, string metadata);
    the container checks each entry.

    Raises
    ------
    CorruptFileError
        "corrupted header: ..." for anything that is not a header of that version.
    """
    text = _inflate(stored) if major >= 2 else bytes(stored)
    header = _parse_json(text)
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), list):
        raise CorruptFileError("corrupted header: it must be a JSON object with a 'tensors' list")
    metadata = header.get("metadata", {})
    if not isinstance(metadata, dict) or not all(is_text(k) and is_text(v) for k, v in metadata.items()):
        raise CorruptFileError("corrupted header: 'metadata' must map strings to strings")
    if len(header["tensors"]) > MAX_TENSORS:
        raise CorruptFileError(f"corrupted header: it lists {len(header['tensors'])} tensors; the limit is {MAX_TENSORS}")
    tensors = _entries_with_offsets(header["tensors"]) if major >= 2 else header["tensors"]
    return {"metadata": metadata, "tensors": tensors}


def is_text(value: Any) -> bool:
    """A str that can be printed and written as UTF-8 (JSON allows lone surrogates; we do not)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ----------------------------------------------------------------------------- reading steps


def _inflate(stored: bytes | memoryview) -> bytes:
    """The JSON of a 2.0 header: one whole DEFLATE stream, inflated within the reader's limit."""
    limit = min(MAX_HEADER_BYTES, _FREE_INFLATION + MAX_INFLATION * len(stored))
    inflater = zlib.decompressobj(_RAW_DEFLATE, zdict=HEADER_DICTIONARY)
    try:
        text = inflater.decompress(stored, limit)
    except zlib.error as exc:
        raise CorruptFileError(f"corrupted header: not a DEFLATE stream ({exc})") from None
    if inflater.unconsumed_tail:
        raise CorruptFileError(
            f"corrupted header: {len(stored)} bytes inflate to more than {limit}, the reader's limit"
        )
    if not inflater.eof or inflater.unused_data:
        raise CorruptFileError("corrupted header: the DEFLATE stream is cut short or followed by other bytes")
    return text


def _parse_json(text: bytes) -> Any:
    """JSON, strictly: any value Python's ``json`` would bend is corruption."""
    try:
        return json.loads(
            text.decode("utf-8"),
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            object_pairs_hook=_unique_keys,
        )
    except (UnicodeDecodeError, RecursionError, ValueError) as exc:
        # ValueError covers JSONDecodeError and an integer of more than 4300 digits
        raise CorruptFileError(f"corrupted header: not valid UTF-8 JSON ({clip(str(exc))})") from None


def _entries_with_offsets(tensors: list) -> list[dict[str, Any]]:
    """2.0 tensor arrays as 1.0 entries: each section's offset is where the previous one ended."""
    entries, offset = [], 0
    for index, tensor in enumerate(tensors):
        if not isinstance(tensor, list) or len(tensor) != 6 or not isinstance(tensor[5], list):
            raise CorruptFileError(
                f"corrupted header: tensor entry {index} must be [name, dtype, shape, codec, meta, sections]"
            )
        name, dtype, shape, codec, meta, sections = tensor
        placed = []
        for section in sections:
            if not isinstance(section, list) or len(section) != 3 or not _is_count(section[1]):
                raise CorruptFileError(
                    f"corrupted header: tensor entry {index}: section {clip(repr(section))} must be [name, length, crc32]"
                )
            placed.append([section[0], offset, section[1], section[2]])
            offset += section[1]
        entries.append({"name": name, "dtype": dtype, "shape": shape, "codec": codec, "meta": meta, "sections": placed})
    return entries


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {clip(text)} is out of the float range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict; a repeated key (which one wins is up to the reader) is refused."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        repeated = sorted(key for key, times in Counter(key for key, _ in pairs).items() if times > 1)
        raise ValueError(f"keys repeated in one object: {clip(repr(repeated))}")
    return obj


def clip(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters for an error message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
