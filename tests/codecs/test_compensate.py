import numpy as np
import pytest

from weightcodec.codecs import uniform
from weightcodec.codecs.compensate import compensated_levels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compensation_lowers_the_output_error(seed):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(0, 1, (24, 24))
    x = rng.normal(0, 1, (2000, 24)) @ mixing  # correlated inputs
    hessian = x.T @ x / len(x)
    w = rng.normal(0, 0.1, (16, 24))
    steps = np.full((1, 1), 0.05, np.float32)

    def output_error(levels):
        delta = w - levels * np.float64(steps[0, 0])
        return float(np.trace(delta @ hessian @ delta.T))

    plain = uniform.quantize_levels(w, steps)
    compensated = compensated_levels(w, steps, 0.0, hessian)
    assert compensated.shape == w.shape and compensated.dtype == np.int64
    assert output_error(compensated) < 0.8 * output_error(plain)


def test_identity_hessian_is_plain_rounding():
    w = np.random.default_rng(0).normal(0, 1, (5, 7))
    steps = np.linspace(0.1, 0.4, 7).reshape(1, 7).astype(np.float32)
    np.testing.assert_array_equal(compensated_levels(w, steps, 0.0, np.eye(7)), uniform.quantize_levels(w, steps))
