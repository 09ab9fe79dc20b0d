"""GPTQ-style rounding with error compensation: levels whose layer output is closest to the original's.

Rounding each weight of a Linear layer ``y = W x`` to its nearest level minimises the weight
error, not the output error ``E|ΔW x|^2 = tr(ΔW H ΔW^T)`` with ``H = E[x x^T]``. GPTQ (Frantar et
al., ICLR 2023, after Optimal Brain Surgeon) quantizes the columns (input features) one at a
time and moves each column's rounding error onto the columns not yet quantized, in proportion to
how the inputs correlate::

    U = upper Cholesky factor of (H + damping)^-1
    for j = 0 .. cols - 1:
        q_j  = round(w_j / Δ_j) * Δ_j                   the column, rounded
        e    = (w_j - q_j) / U_jj
        w_k -= e * U_jk          for every k > j        compensate the later columns

The levels come out on the same grid (one step per column here) and are coded as usual; only
which level each weight gets changes.
"""

from __future__ import annotations

import numpy as np

from .uniform import quantize_with_error

__all__ = ["DAMPING", "compensated_levels"]

#: Added to H's diagonal, as a fraction of its mean diagonal: keeps H invertible when inputs are
#: correlated or some never vary (GPTQ's 1%).
DAMPING = 0.01


def compensated_levels(values: np.ndarray, steps: np.ndarray, dead_zone: float, hessian: np.ndarray) -> np.ndarray:
    """Levels of ``values`` (rows x cols) on ``steps`` chosen column by column with GPTQ compensation.

    Parameters
    ----------
    values : ndarray of float, shape (rows, cols)
        A Linear weight (out_features x in_features).
    steps : ndarray of float32, shape (1, 1) or (1, cols)
        The step of every column.
    dead_zone : float
        As for :func:`~weightcodec.codecs.uniform.quantize_levels`.
    hessian : ndarray of float64, shape (cols, cols)
        ``E[x x^T]`` of the layer's inputs; symmetric positive semi-definite.

    Returns
    -------
    ndarray of int64, shape (rows, cols)

    Examples
    --------
    >>> w = np.array([[0.26, 0.26]]); h = np.array([[1.0, 0.9], [0.9, 1.0]])
    >>> compensated_levels(w, np.array([[0.5]], np.float32), 0.0, h).tolist()  # rounding alone: [[1, 1]]
    [[1, 0]]
    """
    rows, cols = values.shape
    work = np.array(values, dtype=np.float64)
    column_steps = np.broadcast_to(np.asarray(steps, dtype=np.float32).reshape(1, -1), (1, cols))
    damped = np.array(hessian, dtype=np.float64)
    damped[np.diag_indices(cols)] += DAMPING * max(float(np.mean(np.diag(damped))), 1e-12)
    upper = np.linalg.cholesky(np.linalg.inv(damped)).T
    levels = np.empty((rows, cols), dtype=np.int64)
    for j in range(cols):
        column, _ = quantize_with_error(work[:, j : j + 1].copy(), column_steps[:, j].reshape(1, 1), dead_zone)
        levels[:, j] = column[:, 0]
        error = (work[:, j] - column[:, 0] * np.float64(column_steps[0, j])) / upper[j, j]
        work[:, j + 1 :] -= np.outer(error, upper[j, j + 1 :])
    return levels
