import json
import os
import stat
import struct
import zlib

import numpy as np
import pytest

from weightcodec import container
from weightcodec.codecs import raw
from weightcodec.errors import CorruptFileError, FormatError, MemoryBudgetError, WeightcodecError


def sample_bytes():
    recs = [
        container.TensorRecord("w", "float32", (2, 3), raw.encode(np.arange(6, dtype=np.float32).reshape(2, 3))),
        container.TensorRecord("empty", "float32", (0, 4), raw.encode(np.zeros((0, 4), np.float32))),
        container.TensorRecord("scalar", "int64", (), raw.encode(np.array(7, dtype=np.int64))),
    ]
    return container.to_bytes(recs, {"producer": "test"})


def test_roundtrip_and_determinism():
    data = sample_bytes()
    assert data == sample_bytes()
    f = container.from_bytes(data)
    arrays = f.arrays()
    np.testing.assert_array_equal(arrays["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert arrays["empty"].shape == (0, 4)
    assert arrays["scalar"] == 7 and arrays["scalar"].dtype == np.int64
    assert f.metadata == {"producer": "test"}
    assert f.file_bytes == len(data)


def test_every_flipped_byte_is_detected():
    data = sample_bytes()
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x40
        with pytest.raises(FormatError):
            container.from_bytes(bytes(bad)).arrays()


def test_every_truncation_is_detected():
    data = sample_bytes()
    for n in range(len(data)):
        with pytest.raises(FormatError):
            container.from_bytes(data[:n])


def test_trailing_bytes_rejected():
    with pytest.raises(CorruptFileError, match="trailing"):
        container.from_bytes(sample_bytes() + b"\0")


def test_newer_major_version_is_refused_with_upgrade_hint():
    data = bytearray(sample_bytes())
    struct.pack_into("<H", data, 8, container.VERSION[0] + 1)
    with pytest.raises(FormatError, match="upgrade weightcodec"):
        container.from_bytes(bytes(data))


def test_unknown_codec_is_named():
    header = b'{"metadata":{},"tensors":[{"name":"a","dtype":"float32","shape":[1],"codec":"zzz","meta":{},"sections":[]}]}'
    fixed = container.PREAMBLE.pack(container.MAGIC, 1, 0, len(header), 0)[:16]
    data = fixed + struct.pack("<I", zlib.crc32(header, zlib.crc32(fixed))) + header
    with pytest.raises(FormatError, match="unknown codec 'zzz'"):
        container.from_bytes(data)


def test_write_is_atomic_on_failure(tmp_path):
    target = tmp_path / "out.wcz"
    bad = [container.TensorRecord("a", "complex64", (1,), raw.encode(np.zeros(1, np.float32)))]
    with pytest.raises(Exception):
        container.write(target, bad)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- hostile files
# Each file below is well-formed where it does not matter (magic, checksums computed by the
# attacker), so the reader must reject it on the field under attack, with a FormatError and
# before allocating anything large. Nothing in a file is ever executed (there is no pickle).


def craft(header, data: bytes = b"", *, major: int = 1, minor: int = 0, header_length: int | None = None) -> bytes:
    """A .wcz file with any header (a dict, or raw bytes) and data area, its checksum correct."""
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(body) if header_length is None else header_length
    fixed = container.PREAMBLE.pack(container.MAGIC, major, minor, length, 0)[:16]
    return fixed + struct.pack("<I", zlib.crc32(body, zlib.crc32(fixed))) + body + data


def entry(data: bytes = b"\0" * 4, **fields):
    base = {"name": "t", "dtype": "float32", "shape": [1], "codec": "raw", "meta": {"dtype": "<f4"},
            "sections": [["data", 0, len(data), zlib.crc32(data)]]}
    return {**base, **fields}


def one(data: bytes = b"\0" * 4, **fields) -> bytes:
    return craft({"metadata": {}, "tensors": [entry(data, **fields)]}, data)


PICKLE = b"\x80\x04\x95\x1f\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x8c\x06system\x93\x8c\x04true\x85R."
HOSTILE = {
    "header length zero": craft(b"", header_length=0),
    "header length 1": craft(b"{", header_length=1),
    "header length beyond the limit": craft(b"{}", header_length=container.MAX_HEADER_BYTES + 1),
    "header length beyond the file": craft(b"{}", header_length=10**6),
    "header not utf-8": craft(b'{"tensors": [], "x": "\xff\xfe"}'),
    "header not json": craft(b"{tensors: []}"),
    "header a list": craft([1, 2]),
    "header nested 100000 deep": craft(b"[" * 100_000 + b"]" * 100_000),
    "tensors missing": craft({"metadata": {}}),
    "tensors not a list": craft({"tensors": {"a": 1}}),
    "metadata not strings": craft({"metadata": {"a": 1}, "tensors": []}),
    "tensor entry not an object": craft({"tensors": ["w"]}),
    "name empty": one(name=""),
    "name too long": one(name="x" * 1025),
    "name not a string": one(name=7),
    "duplicate names": craft({"tensors": [entry(b""), entry(b"", sections=[["data", 0, 0, 0]])]}),
    "dtype object": one(dtype="object"),
    "dtype complex": one(dtype="complex64"),
    "shape negative": one(shape=[-1]),
    "shape float": one(shape=[1.0]),
    "shape bool": one(shape=[True]),
    "shape too many dims": one(shape=[1] * 9),
    "shape too many elements": one(shape=[2**21, 2**20]),
    "shape not a list": one(shape="1"),
    "codec unknown": one(codec="pickle"),
    "codec not a string": one(codec=["raw"]),
    "meta not an object": one(meta=[]),
    "sections not a list": one(sections={"data": 0}),
    "section wrong arity": one(sections=[["data", 0, 4]]),
    "section negative offset": one(sections=[["data", -4, 4, 0]]),
    "section bool length": one(sections=[["data", 0, True, 0]]),
    "section crc too big": one(sections=[["data", 0, 4, 2**32]]),
    "section huge length": one(sections=[["data", 0, 2**62, 0]]),
    "section past the end": one(sections=[["data", 0, 5, 0]]),
    "sections overlap": one(b"\0" * 8, sections=[["data", 0, 8, zlib.crc32(b"\0" * 8)], ["more", 4, 4, zlib.crc32(b"\0" * 4)]]),
    "sections leave a gap": one(b"\0" * 8, sections=[["data", 4, 4, zlib.crc32(b"\0" * 4)]]),
    "section names repeat": one(b"\0" * 8, sections=[["data", 0, 4, zlib.crc32(b"\0" * 4)], ["data", 4, 4, zlib.crc32(b"\0" * 4)]]),
    "section checksum wrong": one(sections=[["data", 0, 4, 1234]]),
    "trailing bytes": craft({"metadata": {}, "tensors": [entry()]}, b"\0" * 5),
    "raw dtype object (pickle)": one(PICKLE, meta={"dtype": "|O"}, shape=[len(PICKLE)]),
    "raw dtype missing": one(meta={}),
    "raw length does not match shape": one(shape=[2]),
    "raw big-endian": one(meta={"dtype": ">f4"}),
    "alias with sections": craft({"metadata": {}, "tensors": [entry(), entry(name="u", codec="alias", meta={"target": "t"},
                                                                           sections=[["data", 4, 4, zlib.crc32(b"\0" * 4)]])]}, b"\0" * 8),
    "alias of a later tensor": craft({"metadata": {}, "tensors": [entry(name="u", codec="alias", meta={"target": "t"}, sections=[]), entry()]}, b"\0" * 4),
    "alias of itself": craft({"metadata": {}, "tensors": [entry(name="u", codec="alias", meta={"target": "u"}, sections=[])]}),
    "alias of a missing tensor": craft({"metadata": {}, "tensors": [entry(), entry(name="u", codec="alias", meta={"target": "v"}, sections=[])]}, b"\0" * 4),
    "alias of an alias": craft({"metadata": {}, "tensors": [entry(), entry(name="u", codec="alias", meta={"target": "t"}, sections=[]),
                                                            entry(name="v", codec="alias", meta={"target": "u"}, sections=[])]}, b"\0" * 4),
    "alias of another shape": craft({"metadata": {}, "tensors": [entry(), entry(name="u", codec="alias", shape=[2], meta={"target": "t"}, sections=[])]}, b"\0" * 4),
    "alias of another dtype": craft({"metadata": {}, "tensors": [entry(), entry(name="u", codec="alias", dtype="int32", meta={"target": "t"}, sections=[])]}, b"\0" * 4),
    "alias target not a string": craft({"metadata": {}, "tensors": [entry(), entry(name="u", codec="alias", meta={"target": 0}, sections=[])]}, b"\0" * 4),
    "version 0": craft({"metadata": {}, "tensors": []}, major=0),
    "version from the future": craft({"metadata": {}, "tensors": []}, major=3, minor=3),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_files_are_rejected(name):
    with pytest.raises(FormatError):
        container.from_bytes(HOSTILE[name]).arrays()


def test_an_alias_decodes_as_its_target():
    data = b"\0\0\x80?"
    wcz = container.from_bytes(craft({"metadata": {}, "tensors": [entry(data), entry(name="u", codec="alias", meta={"target": "t"}, sections=[])]}, data))
    assert wcz.decode("u").tolist() == [1.0] and wcz.record("u").nbytes == 0


def test_a_newer_minor_version_is_read():
    f = container.from_bytes(craft({"metadata": {}, "tensors": [], "future_key": 1}, minor=9))
    assert f.records == ()


def test_a_huge_sparse_tensor_is_refused_before_allocation():
    # an all-zero deep layer is a valid file; decoding 2^40 float32 would need 4 TiB
    data = craft({"metadata": {}, "tensors": [
        {"name": "huge", "dtype": "float32", "shape": [2**20, 2**20], "codec": "deep",
         "meta": {"index_bits": 1, "entropy": "huffman", "entries": 0},
         "sections": [["codebook", 0, 0, 0], ["gaps", 0, 0, 0], ["codes", 0, 0, 0]]}]})
    with pytest.raises(MemoryBudgetError, match=r"decoding 1 tensor needs 4\.0 TiB \(4398046511104 bytes\), more than the budget"):
        container.from_bytes(data).arrays()


def test_unreadable_paths(tmp_path):
    with pytest.raises(WeightcodecError, match="no such file"):
        container.read(tmp_path / "missing.wcz")
    with pytest.raises(WeightcodecError, match="is a directory"):
        container.read(tmp_path)


def test_atomic_write_refuses_missing_folder_and_directories(tmp_path):
    with pytest.raises(WeightcodecError, match="cannot write: folder .* does not exist"):
        container.atomic_write_bytes(tmp_path / "no" / "f.wcz", b"x")
    with pytest.raises(WeightcodecError, match="is a directory, expected a file name"):
        container.atomic_write_bytes(tmp_path, b"x")
    assert list(tmp_path.iterdir()) == []


def test_written_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        container.atomic_write_bytes(tmp_path / "f.wcz", b"x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "f.wcz").stat().st_mode) == 0o644


def test_decode_into_out_writes_in_place_copies_for_other_codecs_and_refuses_raw():
    from weightcodec.codecs import deep, weightless

    rng = np.random.default_rng(0)
    layer = np.where(rng.random((8, 8)) < 0.3, rng.choice([-0.5, 0.25, 1.0], (8, 8)), 0).astype(np.float32)
    records = [
        container.TensorRecord("wl", "float32", (8, 8), weightless.encode(layer, t=8)),  # has decode_into
        container.TensorRecord("dp", "float32", (8, 8), deep.encode(layer)),  # has not: decoded, then copied
        container.TensorRecord("ids", "int64", (3,), raw.encode(np.arange(3))),
    ]
    wcz = container.from_bytes(container.to_bytes(records))
    for name in ("wl", "dp"):
        out = np.full((8, 8), np.nan, np.float32)
        assert wcz.decode(name, out=out) is out
        np.testing.assert_array_equal(out, wcz.decode(name))
    with pytest.raises(WeightcodecError, match="'ids' is raw int64: it decodes to its own bytes, not into out"):
        wcz.decode("ids", out=np.zeros(3, np.float32))
    with pytest.raises(WeightcodecError, match=r"out for tensor 'dp' must be .* of shape \[8, 8\], got float32 \[64\]"):
        wcz.decode("dp", out=np.zeros(64, np.float32))
