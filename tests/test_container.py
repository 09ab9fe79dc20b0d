import struct
import zlib

import numpy as np
import pytest

from weightcodec import container
from weightcodec.codecs import raw
from weightcodec.errors import CorruptFileError, FormatError


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
    struct.pack_into("<H", data, 8, 2)
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
