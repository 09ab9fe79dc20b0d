import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightcodec.codecs.sparse_index import MAX_INDEX_BITS, gaps_with_fillers, positions_from_gaps
from weightcodec.errors import EncodeError


def test_docstring_example_b2():
    gaps, fill = gaps_with_fillers(np.array([1, 10]), 2)
    assert gaps.tolist() == [1, 3, 3, 0]
    assert fill.tolist() == [False, True, True, False]


def test_paper_three_bit_convention():
    # 3-bit field: a difference of 8 still fits (stored as 7); 9 needs one filler zero.
    gaps, fill = gaps_with_fillers(np.array([7]), 3)  # gap 8 from p_{-1} = -1
    assert gaps.tolist() == [7] and fill.tolist() == [False]
    gaps, fill = gaps_with_fillers(np.array([8]), 3)  # gap 9
    assert gaps.tolist() == [7, 0] and fill.tolist() == [True, False]
    gaps, fill = gaps_with_fillers(np.array([0, 1]), 3)  # adjacent weights: gap 1 -> 0
    assert gaps.tolist() == [0, 0]


def test_empty_positions():
    gaps, fill = gaps_with_fillers(np.zeros(0, dtype=np.int64), 5)
    assert gaps.shape == (0,) and fill.shape == (0,)
    assert positions_from_gaps(gaps, fill).shape == (0,)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(0, 5000), max_size=60, unique=True).map(sorted),
    st.integers(1, MAX_INDEX_BITS),
)
def test_roundtrip_and_invariants(positions, index_bits):
    positions = np.array(positions, dtype=np.int64)
    gaps, fill = gaps_with_fillers(positions, index_bits)
    span = 1 << index_bits
    np.testing.assert_array_equal(positions_from_gaps(gaps, fill), positions)
    assert gaps.dtype == np.uint16 and gaps.max(initial=0) < span
    assert np.all(gaps[fill] == span - 1)
    assert not (fill.size and fill[-1])
    expected_fillers = ((np.diff(positions, prepend=-1) - 1) // span).sum()
    assert fill.sum() == expected_fillers


def test_long_gap_at_width_1():
    gaps, fill = gaps_with_fillers(np.array([1000]), 1)
    assert fill.sum() == 500 and gaps[-1] == 0
    assert positions_from_gaps(gaps, fill).tolist() == [1000]


@pytest.mark.parametrize("bits", [0, 17, True, 2.0, "5"])
def test_bad_index_bits(bits):
    with pytest.raises(EncodeError, match=r"index_bits must be an int in 1\.\.16"):
        gaps_with_fillers(np.array([1]), bits)


@pytest.mark.parametrize("positions", [[3, 3], [5, 2], [-1, 4]])
def test_positions_must_increase(positions):
    with pytest.raises(EncodeError, match="strictly increasing"):
        gaps_with_fillers(np.array(positions), 4)
