import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightcodec import container
from weightcodec.codecs import cabac, get_codec, uniform
from weightcodec.errors import CorruptFileError, EncodeError


def levels_of(shape, kind, seed):
    """Integer levels like a quantized layer's: all-zero, sparse, dense small, dense wide."""
    rng = np.random.default_rng(seed)
    if kind == "zero":
        return np.zeros(shape, np.int64)
    if kind == "sparse":
        return ((rng.random(shape) < 0.05) * rng.integers(-3, 4, shape)).astype(np.int64)
    if kind == "dense":
        return np.rint(rng.laplace(0, 2, shape)).astype(np.int64)
    return np.rint(rng.laplace(0, 5000, shape)).astype(np.int64)


@settings(max_examples=80, deadline=None)
@given(
    st.tuples(st.integers(0, 40), st.integers(0, 40)),
    st.sampled_from(["zero", "sparse", "dense", "wide"]),
    st.integers(0, 2**32 - 1),
)
def test_cabac_roundtrip_is_exact(shape, kind, seed):
    levels = levels_of(shape, kind, seed)
    data = cabac.cabac_encode(levels)
    np.testing.assert_array_equal(cabac.cabac_decode(data, *shape), levels)


@settings(max_examples=60, deadline=None)
@given(
    st.tuples(st.integers(1, 30), st.integers(1, 30)),
    st.sampled_from(["zero", "sparse", "dense", "wide"]),
    st.sampled_from(["tensor", "row", "column"]),
    st.integers(0, 2**32 - 1),
)
def test_cabac_scaled_decode_is_numpys_level_times_step(shape, kind, scale, seed):
    """Decoding straight into weights gives, bit for bit, float32(level) * step as NumPy computes it."""
    levels = levels_of(shape, kind, seed)
    rng = np.random.default_rng(seed)
    steps = rng.uniform(1e-4, 2.0, {"tensor": (1, 1), "row": (shape[0], 1), "column": (1, shape[1])}[scale])
    steps = steps.astype(np.float32)
    data = cabac.cabac_encode(levels)
    decoded = cabac.cabac_decode(data, *shape, steps)
    expected = levels.astype(np.float32) * steps
    assert decoded.dtype == np.float32 and cabac.cabac_decode(data, *shape).dtype == np.int32
    np.testing.assert_array_equal(decoded.view(np.uint32), expected.view(np.uint32))


def test_cabac_extreme_levels_and_1x1():
    levels = np.array([[cabac.MAX_LEVEL, -cabac.MAX_LEVEL, 0, 1, -1]])
    np.testing.assert_array_equal(cabac.cabac_decode(cabac.cabac_encode(levels), 1, 5), levels)
    for value in (0, 7, -7):
        one = np.array([[value]])
        np.testing.assert_array_equal(cabac.cabac_decode(cabac.cabac_encode(one), 1, 1), one)


def test_cabac_rejects_levels_beyond_the_limit():
    with pytest.raises(EncodeError, match="exceeds the coder's limit"):
        cabac.cabac_encode(np.array([[cabac.MAX_LEVEL + 1]]))


def test_cabac_is_deterministic_and_cheap_on_zeros():
    levels = levels_of((64, 64), "dense", 3)
    assert cabac.cabac_encode(levels) == cabac.cabac_encode(levels.copy())
    # 4096 zeros: the adaptive sig flag drives the cost far below one bit per level
    assert len(cabac.cabac_encode(np.zeros((64, 64), np.int64))) < 64


def test_cabac_beats_order0_entropy_where_rows_differ_in_spread():
    rng = np.random.default_rng(0)
    spreads = np.exp(rng.normal(0, 0.8, (256, 1)))  # rows with their own spread, as in trained layers
    levels = np.rint(rng.laplace(0, 1, (256, 256)) * spreads * 2).astype(np.int64)
    _, counts = np.unique(levels, return_counts=True)
    order0_bits = -(counts * np.log2(counts / levels.size)).sum()
    assert 8 * len(cabac.cabac_encode(levels)) < 0.97 * order0_bits


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x00\x00", "at least 5"),
        (b"\x01\x00\x00\x00\x00\x00", "starts with byte 1"),
        (b"\x00" + b"\xff" * 12, "above"),
    ],
)
def test_cabac_hostile_streams(data, message):
    with pytest.raises(CorruptFileError, match=message):
        cabac.cabac_decode(data, 4, 4)


def test_cabac_truncated_or_padded_stream_is_rejected():
    levels = levels_of((30, 30), "dense", 1)
    data = cabac.cabac_encode(levels)
    with pytest.raises(CorruptFileError, match="ends before|bytes after|above"):
        cabac.cabac_decode(data[: len(data) // 2], 30, 30)
    with pytest.raises(CorruptFileError, match="bytes after"):
        cabac.cabac_decode(data + b"\x00", 30, 30)
    with pytest.raises(CorruptFileError, match="holds 3 bytes"):
        cabac.cabac_decode(b"abc", 0, 5)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 9), min_size=0, max_size=3),
    st.sampled_from([1e-3, 0.05, 0.5, 10.0]),
    st.sampled_from(["tensor", "row"]),
    st.sampled_from([0.0, 0.2]),
    st.integers(0, 2**32 - 1),
)
def test_uniform_roundtrip_restores_level_times_step(shape, step, scale, dead_zone, seed):
    rng = np.random.default_rng(seed)
    array = (rng.normal(0, 0.1, shape) * (rng.random(shape) < 0.7)).astype(np.float32)
    rows = uniform.matrix_shape(tuple(shape))[0]
    steps = np.full(rows, step) * (1 + np.arange(rows)) if scale == "row" else step
    encoded = uniform.encode(array, step=steps, dead_zone=dead_zone)
    assert encoded.meta == {"scale": scale if rows > 1 or scale == "tensor" else encoded.meta["scale"], "coder": "cabac"}
    stored = np.frombuffer(encoded.sections["steps"], "<f4")
    levels = uniform.quantize_levels(array, stored, dead_zone)
    out = uniform.decode(encoded.meta, encoded.sections, tuple(shape))
    assert out.dtype == np.float32 and out.shape == tuple(shape)
    np.testing.assert_array_equal(out.reshape(levels.shape), levels.astype(np.float32) * stored.reshape(-1, 1))
    # rounding to the nearest level (z = 0): every error is at most half a step
    if dead_zone == 0:
        half = stored.reshape(-1, 1).astype(np.float64) / 2
        err = np.abs(out.reshape(levels.shape).astype(np.float64) - array.reshape(levels.shape))
        assert (err <= half * (1 + 1e-6)).all()


def test_uniform_is_registered_and_deterministic():
    assert get_codec("uniform") is uniform
    w = np.random.default_rng(0).normal(0, 1, (20, 30)).astype(np.float32)
    assert uniform.encode(w, step=0.1).sections == uniform.encode(w.copy(), step=0.1).sections


def test_uniform_dead_zone_makes_more_zeros():
    w = np.random.default_rng(0).normal(0, 1, (50, 50)).astype(np.float32)
    plain, wide = (uniform.quantize_levels(w, np.array([0.5]), z) for z in (0.0, 0.3))
    assert np.count_nonzero(wide) < np.count_nonzero(plain)


def test_uniform_describe_reports_bits_and_bound():
    w = np.random.default_rng(0).normal(0, 1, (40, 40)).astype(np.float32)
    e = uniform.encode(w, step=0.25)
    d = uniform.describe(e.meta, e.sections, w.shape)
    assert d["bytes"] == e.nbytes and d["steps"] == 1 and d["scale"] == "tensor"
    assert d["bits_per_weight"] == pytest.approx(8 * e.nbytes / w.size)
    assert 0.9 * d["bound_bytes"] < d["bytes"] < 1.2 * d["bound_bytes"]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"step": 0.0}, "positive and finite"),
        ({"step": float("nan")}, "positive and finite"),
        ({"step": [0.1, 0.2]}, "one per row"),
        ({"step": 0.1, "dead_zone": 0.5}, "dead_zone"),
        ({"step": 1e-12}, "use a larger step"),
    ],
)
def test_uniform_encode_errors(params, message):
    with pytest.raises(EncodeError, match=message):
        uniform.encode(np.ones((3, 4), np.float32), **params)


def test_uniform_refuses_other_dtypes_and_non_finite():
    with pytest.raises(EncodeError, match="float32"):
        uniform.encode(np.ones(3), step=0.1)
    with pytest.raises(EncodeError, match="finite"):
        uniform.encode(np.array([1.0, np.inf], np.float32), step=0.1)


def _good():
    w = np.random.default_rng(0).normal(0, 1, (6, 5)).astype(np.float32)
    return uniform.encode(w, step=np.linspace(0.1, 0.6, 6))


@pytest.mark.parametrize(
    "meta, sections, message",
    [
        ({"scale": "tensor", "coder": "cabac"}, None, "steps section is 24 bytes"),
        ({"scale": "block", "coder": "cabac"}, None, "'scale'"),
        ({"scale": "row", "coder": "huffman"}, None, "'coder'"),
        (None, {"steps": b"\x00" * 24}, "sections"),
        (None, {"steps": np.full(6, -1.0, "<f4").tobytes(), "levels": b""}, "positive and finite"),
        (None, {"steps": np.full(6, np.inf, "<f4").tobytes(), "levels": b""}, "positive and finite"),
        (None, {"levels": b"\x00\x00\x00"}, "at least 5"),
    ],
)
def test_uniform_hostile_meta_and_sections(meta, sections, message):
    good = _good()
    meta = good.meta if meta is None else meta
    merged = dict(good.sections)
    if sections is not None:
        merged = {k: v for k, v in {**merged, **sections}.items() if k in sections or k in ("steps", "levels")}
        if list(sections) == ["steps"]:
            merged = {"steps": sections["steps"]}
    with pytest.raises(CorruptFileError, match=message):
        uniform.decode(meta, merged, (6, 5))


def test_uniform_hostile_file_with_valid_checksums_is_rejected():
    good = _good()
    bad = {"steps": good.sections["steps"], "levels": good.sections["levels"][:-2]}
    record = container.TensorRecord("w", "float32", (6, 5), type(good)("uniform", good.meta, bad))
    wcz = container.from_bytes(container.to_bytes([record]))
    with pytest.raises(CorruptFileError):
        wcz.decode("w")


def test_uniform_column_steps():
    rng = np.random.default_rng(1)
    w = rng.normal(0, 1, (7, 2, 3)).astype(np.float32)
    steps = np.linspace(0.1, 0.6, 6).reshape(1, 6)
    e = uniform.encode(w, step=steps)
    assert e.meta["scale"] == "column" and len(e.sections["steps"]) == 24
    stored = np.frombuffer(e.sections["steps"], "<f4").reshape(1, 6)
    levels = uniform.quantize_levels(w, stored)
    np.testing.assert_array_equal(uniform.decode(e.meta, e.sections, w.shape).reshape(7, 6), levels.astype(np.float32) * stored)
    with pytest.raises(CorruptFileError, match="steps section is 24 bytes"):
        uniform.decode({"scale": "row", "coder": "cabac"}, e.sections, w.shape)
    with pytest.raises(EncodeError, match="one per column"):
        uniform.encode(w, step=np.ones((2, 6)))
