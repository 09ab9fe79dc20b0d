"""Fuzzing the reader: mutated valid files never crash it, never hang it, never fool it.

Valid files holding every codec are mutated (bits flipped, bytes inserted, deleted, overwritten,
the file cut short). Reading and decoding a mutated file must either raise a
:class:`~weightcodec.errors.WeightcodecError` or, when the mutation left the bytes as they
were, give back exactly the original tensors. Anything else (an IndexError, a MemoryError, a
silently different tensor) is a bug. The CRC-32 over the header and over each section is what
guarantees detection: every mutation changes some covered byte or the lengths.
"""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import weightcodec
from weightcodec import container, tensors
from weightcodec.errors import WeightcodecError


def sample_files() -> dict[str, bytes]:
    torch.manual_seed(0)
    weight = torch.randn(24, 16)
    state = {
        "deep.weight": weight,
        "ans.weight": weight * 2,
        "bloomier.weight": weight * 3,
        "ribbon.weight": weight * 4,
        "half": torch.randn(6, 5).half(),
        "brain": torch.randn(3, 7).bfloat16(),
        "bias": torch.randn(16),
        "count": torch.tensor(7),
        "flags": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3),
    }
    recipe = {
        "rule": [
            {"match": "deep.*", "method": "deep", "sparsity": 0.7, "clusters": 8},
            {"match": "ans.*", "method": "deep", "sparsity": 0.5, "clusters": 4, "entropy": "ans"},
            {"match": "bloomier.*", "method": "weightless", "sparsity": 0.8, "clusters": 4, "t": 5},
            {"match": "ribbon.*", "method": "weightless", "sparsity": 0.8, "clusters": 4, "t": 6, "filter": "ribbon"},
            {"match": "half", "method": "deep", "clusters": 3},
            {"match": "brain", "method": "raw"},
            {"match": "empty", "method": "raw"},
        ]
    }
    return {"mixed": weightcodec.compress(state, recipe, seed=1)}


FILES = sample_files()
ORIGINAL = {name: weightcodec.load_bytes(data) for name, data in FILES.items()}

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**31), st.integers(0, 7)),
    st.tuples(st.just("insert"), st.integers(0, 2**31), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 2**31), st.integers(1, 16)),
    st.tuples(st.just("overwrite"), st.integers(0, 2**31), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("truncate"), st.integers(0, 2**31)),
)


def mutate(data: bytes, steps) -> bytes:
    out = bytearray(data)
    for step in steps:
        kind, position = step[0], step[1] % (len(out) + 1)
        if kind == "flip" and position < len(out):
            out[position] ^= 1 << step[2]
        elif kind == "insert":
            out[position:position] = step[2]
        elif kind == "delete":
            del out[position : position + step[2]]
        elif kind == "overwrite":
            out[position : position + len(step[2])] = step[2]
        elif kind == "truncate":
            del out[position:]
    return bytes(out)


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", sorted(FILES))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(mutation, min_size=1, max_size=3))
def test_mutated_files_are_detected_or_unchanged(name, steps):
    data = FILES[name]
    mutated = mutate(data, steps)
    try:
        decoded = tensors.decode_file(container.from_bytes(mutated))
    except WeightcodecError:
        assert mutated != data
        return
    assert same_state(decoded, ORIGINAL[name]), f"a mutated file decoded to different tensors: {steps}"


def test_every_single_bit_flip_is_detected():
    data = FILES["mixed"]
    for position in range(len(data)):
        for bit in (0, 7):
            bad = bytearray(data)
            bad[position] ^= 1 << bit
            with pytest.raises(WeightcodecError):
                tensors.decode_file(container.from_bytes(bytes(bad)))


def test_sample_file_covers_every_codec_and_filter():
    records = container.from_bytes(FILES["mixed"]).records
    meta = {r.name: r.encoded.meta for r in records}
    assert {r.encoded.codec for r in records} == {"deep", "weightless", "raw"}
    assert meta["ans.weight"]["entropy"] == "ans" and meta["ribbon.weight"]["filter"] == "ribbon"
    assert ORIGINAL["mixed"]["brain"].dtype == torch.bfloat16 and ORIGINAL["mixed"]["half"].dtype == torch.float16
    assert np.array_equal(ORIGINAL["mixed"]["count"].numpy(), np.array(7))
