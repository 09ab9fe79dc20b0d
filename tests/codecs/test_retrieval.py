"""What the three retrieval structures share: every key reads back, one set of argument checks."""

import math
import mmap
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightcodec.codecs.bloomier import bloomier_build, bloomier_query, bloomier_size
from weightcodec.codecs.fuse import fuse_build, fuse_query
from weightcodec.codecs.retrieval import MAX_KEY, check_build_args, output_array
from weightcodec.codecs.ribbon import ribbon_build, ribbon_query
from weightcodec.errors import EncodeError


def bloomier_table_bytes(keys, values, t, seed):
    return bloomier_build(keys, values, t=t, seed=seed).cells.tobytes()


def fuse_table_bytes(keys, values, t, seed):
    return fuse_build(keys, values, t=t, seed=seed).cells.tobytes()


def ribbon_table_bytes(keys, values, t, seed):
    return ribbon_build(keys, values, t, seed=seed)[0]


def bloomier_read_back(keys, values, t, seed):
    table = bloomier_build(keys, values, t=t, seed=seed)
    assert table.m == bloomier_size(keys.size)
    return bloomier_query(table, keys)


def fuse_read_back(keys, values, t, seed):
    return fuse_query(fuse_build(keys, values, t=t, seed=seed), keys)


def ribbon_read_back(keys, values, t, seed):
    table, params = ribbon_build(keys, values, t, seed=seed)
    return ribbon_query(table, params, keys)


# name in the error message -> (build and return the table's bytes, build and query the keys)
STRUCTURES = {
    "Bloomier filter": (bloomier_table_bytes, bloomier_read_back),
    "binary fuse table": (fuse_table_bytes, fuse_read_back),
    "ribbon table": (ribbon_table_bytes, ribbon_read_back),
}


@st.composite
def build_cases(draw):
    clusters = draw(st.integers(2, 256))
    t = draw(st.integers(max(1, math.ceil(math.log2(clusters))), 16))
    n = draw(st.integers(1, 3000))
    return clusters, t, n, draw(st.integers(0, 2**64 - 1)), draw(st.integers(0, 2**32))


@pytest.mark.parametrize("structure", STRUCTURES)
@settings(max_examples=80, deadline=None)
@given(case=build_cases())
def test_every_stored_key_reads_back_exactly(structure, case, random_keys_values):
    clusters, t, n, seed, data_seed = case
    keys, values = random_keys_values(n, clusters, np.random.default_rng(data_seed))
    np.testing.assert_array_equal(STRUCTURES[structure][1](keys, values, t, seed), values)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_tables_depend_on_the_key_set_only(structure, random_keys_values):
    keys, values = random_keys_values(3000, 32, np.random.default_rng(8))
    order = np.argsort(keys)
    table_bytes = STRUCTURES[structure][0]
    assert table_bytes(keys, values, 8, 4) == table_bytes(keys[order], values[order], 8, 4)


OK_KEYS, OK_VALUES = [1, 2], [0, 1]
BAD_ARGUMENTS = [
    # keys, values, t, seed, message after "cannot build a <structure>: "
    (OK_KEYS, OK_VALUES, 0, 0, "t=0 (expected an int in 1..16)"),
    (OK_KEYS, OK_VALUES, 17, 0, "t=17 (expected an int in 1..16)"),
    (OK_KEYS, OK_VALUES, 8.0, 0, "t=8.0 (expected an int in 1..16)"),
    (OK_KEYS, OK_VALUES, True, 0, "t=True (expected an int in 1..16)"),
    (OK_KEYS, OK_VALUES, 8, -1, "seed=-1 (expected an int in 0..2**64-1)"),
    (OK_KEYS, OK_VALUES, 8, 2**64, "seed=18446744073709551616 (expected an int in 0..2**64-1)"),
    (OK_KEYS, OK_VALUES, 0, -1, "t=0 (expected an int in 1..16); seed=-1 (expected an int in 0..2**64-1)"),
    ([[1, 2]], [[0, 1]], 4, 0, "keys of shape (1, 2) and dtype int64 (expected a 1-D integer array)"),
    ([1.5], [0], 4, 0, "keys of shape (1,) and dtype float64 (expected a 1-D integer array)"),
    ([1, 2], [0], 4, 0, "values of shape (1,) and dtype int64 (expected integers, shape (2,))"),
    ([1, 2], [True, False], 4, 0, "values of shape (2,) and dtype bool (expected integers, shape (2,))"),
    ([-1, 2], OK_VALUES, 4, 0, "1 keys outside 0..2**62-1, e.g. [-1]"),
    ([MAX_KEY, 2], OK_VALUES, 4, 0, f"1 keys outside 0..2**62-1, e.g. [{MAX_KEY}]"),
    (np.array([2**63, 2], np.uint64), OK_VALUES, 4, 0, f"1 keys outside 0..2**62-1, e.g. [{2**63}]"),
    ([1, 2], [0, 16], 4, 0, "1 values outside 0..15 for t=4, e.g. [16] (raise t)"),
    ([4, 1, 4], [0, 1, 0], 4, 0, "1 keys repeat, e.g. [4] (keys must be unique)"),
    (
        [1, 1, -2],
        [0, 9, 1],
        3,
        0,
        "1 keys outside 0..2**62-1, e.g. [-2]; 1 values outside 0..7 for t=3, e.g. [9] (raise t); "
        "1 keys repeat, e.g. [1] (keys must be unique)",
    ),
]


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("keys, values, t, seed, message", BAD_ARGUMENTS)
def test_every_structure_refuses_bad_arguments_in_the_same_words(structure, keys, values, t, seed, message):
    with pytest.raises(EncodeError) as info:
        STRUCTURES[structure][0](np.asarray(keys), np.asarray(values), t, seed)
    assert str(info.value) == f"cannot build a {structure}: {message}"


def test_checker_returns_canonical_arrays():
    keys, values, t, seed = check_build_args(
        np.array([9, 2, 5], np.uint32), np.array([1, 0, 3], np.int8), np.int64(4), np.uint64(7), structure="table"
    )
    assert keys.dtype == np.int64 and keys.tolist() == [2, 5, 9]
    assert values.dtype == np.uint16 and values.tolist() == [0, 3, 1]
    assert (t, seed) == (4, 7) and type(t) is int and type(seed) is int
    empty_keys, empty_values, _, _ = check_build_args(np.zeros(0, np.int64), np.zeros(0, np.int64), 1, 0, structure="x")
    assert empty_keys.shape == empty_values.shape == (0,)


def test_checker_reports_the_callers_problems_with_its_own():
    with pytest.raises(EncodeError) as info:
        check_build_args([1], [0], 0, 0, structure="thing", problems=["ratio=0.5 (expected a number >= 1)"])
    assert str(info.value) == "cannot build a thing: t=0 (expected an int in 1..16); ratio=0.5 (expected a number >= 1)"


def vma_flags(address: int) -> list[str]:
    """The VmFlags of the mapping holding ``address`` (Linux /proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                start, end = (int(x, 16) for x in head.split("-"))
                inside = start <= address < end
            elif inside and head == "VmFlags:":
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mapping flags are read from /proc (Linux)")
def test_a_large_new_layer_is_writable_memory_in_small_pages():
    size = (64 << 20) // 4  # the threshold
    layer = output_array(size)
    assert layer.dtype == np.float32 and layer.shape == (size,) and layer.flags.writeable and layer.flags.c_contiguous
    assert isinstance(layer.base.obj, mmap.mmap) and "nh" in vma_flags(layer.ctypes.data)  # no transparent huge pages
    layer[-1] = 1.5
    assert layer[-1] == 1.5
    assert output_array(size - 1).base is None  # a smaller one is NumPy's own
