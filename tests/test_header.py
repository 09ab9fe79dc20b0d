"""Format versions of the header: 2.0 (compact, written now) and 1.0 (JSON, still read)."""

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import weightcodec
from weightcodec import container, header, state_files
from weightcodec.errors import CorruptFileError

FIXTURES = Path(__file__).parent / "fixtures"
RESULTS = Path(__file__).parents[1] / "benchmarks" / "results"


def test_a_version_1_0_file_still_reads_exactly():
    # written by weightcodec at format 1.0 (every codec and filter, float16, bfloat16, bool,
    # a scalar and an empty tensor); the .safetensors holds what it decoded to then
    data = (FIXTURES / "format-1.0.wcz").read_bytes()
    assert struct.unpack_from("<HH", data, 8) == (1, 0)
    state = weightcodec.load(FIXTURES / "format-1.0.wcz")
    expected = state_files.load_state_dict(FIXTURES / "format-1.0.safetensors")
    assert sorted(state) == sorted(expected)  # safetensors sorts its keys
    for name, tensor in expected.items():
        assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor), name
    codecs = {(r.encoded.codec, r.encoded.meta.get("filter")) for r in container.read(FIXTURES / "format-1.0.wcz").records}
    assert codecs == {("raw", None), ("deep", None), ("weightless", "bloomier"), ("weightless", "ribbon"), ("weightless", "fuse")}


def test_a_2_0_file_with_deep_context_classes_still_reads_exactly():
    # written when the deep codec's optional "classes" section was added (dense ANS and sparse Huffman)
    data = (FIXTURES / "deep-classes-2.0.wcz").read_bytes()
    assert struct.unpack_from("<HH", data, 8) == (2, 0)
    state = weightcodec.load(FIXTURES / "deep-classes-2.0.wcz")
    expected = state_files.load_state_dict(FIXTURES / "deep-classes-2.0.safetensors")
    assert sorted(state) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name
    records = container.read(FIXTURES / "deep-classes-2.0.wcz").records
    assert [list(r.encoded.sections) for r in records] == [["codebook", "gaps", "classes", "codes"]] * 2
    assert {r.encoded.meta["entropy"] for r in records} == {"ans", "huffman"}


def test_a_1_0_file_rewritten_is_2_0_with_the_same_records():
    old = container.read(FIXTURES / "format-1.0.wcz")
    data = container.to_bytes(old.records, old.metadata)
    assert struct.unpack_from("<HH", data, 8) == container.VERSION == (2, 0)
    new = container.from_bytes(data)
    assert new.metadata == old.metadata and new.header_bytes < old.header_bytes / 4
    for a, b in zip(old.records, new.records):
        assert (a.name, a.dtype, a.shape, a.encoded.codec, a.encoded.meta) == (b.name, b.dtype, b.shape, b.encoded.codec, b.encoded.meta)
        assert {k: bytes(v) for k, v in a.encoded.sections.items()} == {k: bytes(v) for k, v in b.encoded.sections.items()}


@pytest.mark.parametrize("name", ["lenet5-deep", "lenet5-weightless", "lenet300-deep", "lenet300-weightless"])
def test_the_committed_lenet_files_rewritten_have_headers_of_at_most_300_bytes(name):
    data = (RESULTS / f"reproduce-{name}.wcz").read_bytes()
    old = container.from_bytes(data)
    new = container.from_bytes(container.to_bytes(old.records, old.metadata))
    assert new.header_bytes <= 300
    if struct.unpack_from("<HH", data, 8) == (1, 0):
        assert old.header_bytes > 1100  # committed at 1.0: the rewrite shrinks its header
    else:
        assert old.header_bytes == new.header_bytes  # re-run since 2.0: already compact
    assert new.file_bytes == old.file_bytes - old.header_bytes + new.header_bytes
    old_arrays, new_arrays = old.arrays(), new.arrays()
    assert all(np.array_equal(old_arrays[k], new_arrays[k]) for k in old_arrays)


def test_decode_header_gives_the_1_0_form_for_both_versions():
    entries = [
        {"name": "w", "dtype": "float32", "shape": [2, 3], "codec": "raw", "meta": {"dtype": "<f4"},
         "sections": [["data", 0, 24, 5]]},
        {"name": "d", "dtype": "float16", "shape": [4], "codec": "deep", "meta": {"index_bits": 2, "entropy": "ans", "entries": 1},
         "sections": [["codebook", 24, 4, 6], ["gaps", 28, 2, 7], ["codes", 30, 2, 8]]},
    ]
    metadata = {"producer": "test"}
    v1 = json.dumps({"metadata": metadata, "tensors": entries}).encode()
    assert header.decode_header(v1, 1) == header.decode_header(header.encode_header(metadata, entries), 2)
    assert header.decode_header(v1, 1) == {"metadata": metadata, "tensors": entries}


def craft2(body: bytes, data: bytes = b"") -> bytes:
    """A 2.0 file with any stored header and data area, its checksum correct."""
    fixed = container.PREAMBLE.pack(container.MAGIC, 2, 0, len(body), 0)[:16]
    return fixed + struct.pack("<I", zlib.crc32(body, zlib.crc32(fixed))) + body + data


def packed(text: bytes, dictionary: bytes = header.HEADER_DICTIONARY) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, dictionary)
    return packer.compress(text) + packer.flush()


HOSTILE_2_0 = {
    "not DEFLATE": craft2(b'{"metadata":{},"tensors":[]}'),
    "DEFLATE bomb": craft2(packed(b'{"metadata":{},"tensors":[' + b"0," * 2**22 + b"0]}")),
    "cut short": craft2(packed(b'{"metadata":{},"tensors":[]}')[:-3]),
    "followed by other bytes": craft2(packed(b'{"metadata":{},"tensors":[]}') + b"xx"),
    # back-references into another dictionary read other bytes of ours: not JSON
    "another dictionary": craft2(packed(b'{"metadata":{"a":"something else"},"tensors":[]}', b'"something else"')),
    "JSON with NaN": craft2(packed(b'{"metadata":{},"tensors":[],"x":NaN}')),
    "tensor an object": craft2(packed(json.dumps({"tensors": [{"name": "w"}]}).encode())),
    "tensor of 5 fields": craft2(packed(json.dumps({"tensors": [["w", "float32", [1], "raw", {}]]}).encode())),
    "section with an offset": craft2(packed(json.dumps(
        {"tensors": [["w", "float32", [1], "raw", {"dtype": "<f4"}, [["data", 0, 4, zlib.crc32(b"1234")]]]]}).encode()), b"1234"),
    "section length negative": craft2(packed(json.dumps(
        {"tensors": [["w", "float32", [1], "raw", {"dtype": "<f4"}, [["data", -4, 0]]]]}).encode())),
    "section length a string": craft2(packed(json.dumps(
        {"tensors": [["w", "float32", [1], "raw", {"dtype": "<f4"}, [["data", "4", 0]]]]}).encode())),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_2_0))
def test_hostile_2_0_headers_are_corrupted_headers(name):
    with pytest.raises(CorruptFileError, match="^corrupted header: "):
        container.from_bytes(HOSTILE_2_0[name])


def test_a_valid_hand_made_2_0_file_reads():
    body = {"metadata": {"a": "b"}, "tensors": [["w", "float32", [1], "raw", {"dtype": "<f4"},
                                                  [["data", 4, zlib.crc32(np.float32([1.5]).tobytes())]]]]}
    wcz = container.from_bytes(craft2(packed(json.dumps(body).encode()), np.float32([1.5]).tobytes()))
    assert wcz.metadata == {"a": "b"} and wcz.arrays()["w"].tolist() == [1.5]


def test_the_format_page_gives_the_preset_dictionary_exactly():
    page = (Path(__file__).parents[1] / "docs" / "format.md").read_text()
    block = page.split("```text\n", 1)[1].split("\n```", 1)[0]
    assert block.encode("ascii") == header.HEADER_DICTIONARY
