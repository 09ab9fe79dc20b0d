"""Uniform scalar quantization: integer levels on a grid of step Δ, context-coded, no positions.

A weight ``w`` of row ``r`` is stored as the integer level ``v = sign(w) * floor(|w| / Δ_r +
1/2 - z)`` and restored as ``v * Δ_r``. ``Δ`` is one step for the tensor or one per row
(output channel); ``z`` in ``[0, 1/2)`` widens the dead zone around 0 (``z = 0`` is plain
rounding). Zeros are level 0 like any other level: a dense tensor pays no position stream, a
sparse one pays for its zeros through the coder's ``sig`` flag only (a fraction of a bit
each when most weights are zero).

::

    weights   0.31 -0.02  0.58 -0.61        Δ = 0.2, z = 0
    levels       2     0     3    -3        -> steps [0.2], levels coded by cabac.py
    restored  0.40  0.00  0.60 -0.60

With an entropy coder behind it, a uniform quantizer is within 0.25 bit per weight of the
rate-distortion bound at high rate whatever the weight distribution (Gish & Pierce, 1968),
and one step for every tensor is the equal-slope (optimal) allocation of squared error: this
is what :func:`weightcodec.encode_to_size` searches over. The levels are coded by
:mod:`~weightcodec.codecs.cabac` (row-major over the tensor seen as ``rows x cols``, ``rows``
its first dimension). Byte layout: ``docs/codecs/uniform.md``.
"""

from __future__ import annotations

import math
from typing import Mapping

import numba
import numpy as np

from ..errors import CorruptFileError, EncodeError
from .base import Encoded
from .cabac import MAX_LEVEL, cabac_decode, cabac_encode

__all__ = ["NAME", "SCALES", "quantize_levels", "quantize_with_error", "matrix_shape", "step_matrix", "encode", "encode_levels", "decode", "describe", "grid_step", "estimate_grid"]

NAME = "uniform"
#: Step granularity stored in ``meta["scale"]``: one step, one per row (first dimension), or one
#: per column (an input feature of a Linear weight: what calibrated allocation weights).
SCALES = ("tensor", "row", "column")
SECTIONS = ("steps", "levels")
STEP_DTYPE = np.dtype("<f4")
LEVEL_CODER = "cabac"
MAX_DEAD_ZONE = 0.5


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The ``rows x cols`` view the levels are coded in: first dimension by the rest (1-D: one row).

    Examples
    --------
    >>> matrix_shape((4, 3, 2)), matrix_shape((5,)), matrix_shape(())
    ((4, 6), (1, 5), (1, 1))
    """
    if len(shape) < 2:
        return 1, math.prod(shape)
    return shape[0], math.prod(shape[1:])


def quantize_levels(array: np.ndarray, steps: np.ndarray, dead_zone: float = 0.0) -> np.ndarray:
    """Integer levels of ``array`` (viewed as ``rows x cols``) for one step, or one per row or column.

    Parameters
    ----------
    array : ndarray of float, any shape
    steps : ndarray of float32
        Positive, finite: shape (1,) or (rows,) (one per row), or a step matrix of shape
        (1, 1), (rows, 1) or (1, cols).
    dead_zone : float
        ``z`` in ``[0, 0.5)``: values below ``(1/2 + z) * Δ`` in magnitude become level 0.

    Returns
    -------
    ndarray of int64, shape (rows, cols)

    Examples
    --------
    >>> quantize_levels(np.array([0.31, -0.02, 0.58, -0.61]), np.array([0.2], np.float32)).tolist()
    [[2, 0, 3, -3]]
    """
    return quantize_with_error(array, steps, dead_zone)[0]


def quantize_with_error(array: np.ndarray, steps: np.ndarray, dead_zone: float = 0.0) -> tuple[np.ndarray, float]:
    """:func:`quantize_levels` and the squared error of the float32 reconstruction, in one pass.

    Returns
    -------
    levels : ndarray of int64, shape (rows, cols)
    squared_error : float
        ``sum((array - float32(level) * step)^2)`` in float64, the step as stored (float32).
    """
    rows, cols = matrix_shape(np.shape(array))
    values = np.ascontiguousarray(array).reshape(rows, cols)
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float64)
    stored = step_matrix(steps, rows, cols)
    levels = np.empty((rows, cols), dtype=np.int64)
    error = _quantize(values, stored, 0.5 - float(dead_zone), levels)
    return levels, error


@numba.njit(cache=True)
def _quantize(values, steps, offset, levels):
    error = 0.0
    rows, cols = values.shape
    per_row, per_column = steps.shape[0] > 1, steps.shape[1] > 1
    for r in range(rows):
        for c in range(cols):
            step32 = steps[r if per_row else 0, c if per_column else 0]
            step = np.float64(step32)
            x = np.float64(values[r, c])
            m = np.floor(abs(x) / step + offset)
            level = int(-m if x < 0 else m)
            levels[r, c] = level
            d = x - np.float64(np.float32(level) * step32)
            error += d * d
    return error


def step_matrix(steps: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``steps`` as a float32 matrix of shape (1, 1), (rows, 1) or (1, cols); 1-D means per row.

    Raises
    ------
    EncodeError
        For any other shape.
    """
    steps = np.asarray(steps, dtype=STEP_DTYPE)
    if steps.ndim < 2:
        steps = steps.reshape(-1, 1)
    if steps.shape not in ((1, 1), (rows, 1), (1, cols)):
        raise EncodeError(
            f"steps of shape {steps.shape} do not fit levels of {rows} x {cols}: give one step, "
            f"one per row ({rows}) or one per column ({cols})"
        )
    return np.ascontiguousarray(steps, dtype=np.float32)


def encode(array: np.ndarray, *, step: float | np.ndarray, dead_zone: float = 0.0) -> Encoded:
    """Quantize a float32 array to levels on a uniform grid and code them.

    Parameters
    ----------
    array : ndarray of float32, any shape
        Finite values.
    step : float or ndarray of float, shape (rows,), (rows, 1) or (1, cols)
        ``Δ``: one positive step for the tensor, one per row (first dimension), or one per
        column of the ``rows x cols`` view. Stored as float32, and the levels are computed with
        the stored value.
    dead_zone : float
        ``z`` in ``[0, 0.5)`` (see :func:`quantize_levels`); 0 rounds to the nearest level.

    Returns
    -------
    Encoded
        Sections ``steps`` and ``levels``; ``meta`` holds ``scale`` and ``coder``.

    Raises
    ------
    EncodeError
        For a non-float32 or non-finite array, a step that is not positive and finite or has the
        wrong length, a dead zone outside ``[0, 0.5)``, or a level above ``MAX_LEVEL``.

    Examples
    --------
    >>> w = np.array([[0.31, -0.02], [0.58, -0.61]], dtype=np.float32)
    >>> e = encode(w, step=0.2)
    >>> e.meta, decode(e.meta, e.sections, w.shape).astype(np.float64).round(2).tolist()
    ({'scale': 'tensor', 'coder': 'cabac'}, [[0.4, 0.0], [0.6, -0.6]])
    """
    values = _check_array(array)
    steps = _check_steps(step, *matrix_shape(values.shape))
    if not (isinstance(dead_zone, (int, float)) and 0.0 <= dead_zone < MAX_DEAD_ZONE):
        raise EncodeError(f"dead_zone must be a number in [0, {MAX_DEAD_ZONE}), got {dead_zone!r}")
    return encode_levels(quantize_levels(values, steps, dead_zone), steps)


def encode_levels(levels: np.ndarray, steps: np.ndarray) -> Encoded:
    """Store already quantized ``rows x cols`` levels with their steps (see :func:`step_matrix`)."""
    steps = step_matrix(steps, *levels.shape)
    peak = int(np.abs(levels).max()) if levels.size else 0
    if peak > MAX_LEVEL:
        raise EncodeError(
            f"step {float(steps.min()):.3g} gives a level of magnitude {peak}, above {MAX_LEVEL}; use a larger step"
        )
    scale = SCALES[0] if steps.size == 1 else SCALES[1] if steps.shape[0] > 1 else SCALES[2]
    return Encoded(NAME, {"scale": scale, "coder": LEVEL_CODER}, {"steps": steps.tobytes(), "levels": cabac_encode(levels)})


def decode(meta: Mapping, sections: Mapping[str, bytes], shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`encode`: ``levels * step`` as float32 of ``shape``.

    Raises
    ------
    CorruptFileError
        For unknown sections or meta values, a step section of the wrong length or with a value
        that is not positive and finite, or a level stream that does not decode to exactly the
        tensor's levels.
    """
    _, values = _read(meta, sections, shape, scaled=True)
    return values.reshape(shape)


def describe(meta: Mapping, sections: Mapping[str, bytes], shape: tuple[int, ...]) -> dict:
    """Figures for ``inspect``: bits per weight against the order-0 entropy of the levels.

    Returns
    -------
    dict
        ``scale``, ``steps`` (how many), ``nonzero``, ``bits_per_weight`` (all sections),
        ``bytes``, ``section_bytes``, ``bound_bytes`` (order-0 entropy of the levels plus the
        steps: what a coder without contexts would need at best, model excluded) and
        ``overhead_percent`` (negative when the contexts beat the order-0 bound).
    """
    steps, levels = _read(meta, sections, shape)
    section_bytes = {name: len(sections[name]) for name in SECTIONS}
    total = sum(section_bytes.values())
    bound = _entropy_bits(levels) / 8 + section_bytes["steps"]
    size = levels.size
    return {
        "scale": meta["scale"],
        "steps": int(steps.size),
        "nonzero": int(np.count_nonzero(levels)),
        "bits_per_weight": 8.0 * total / size if size else 0.0,
        "bytes": total,
        "section_bytes": section_bytes,
        "bound_bytes": bound,
        "overhead_percent": 100.0 * (total - bound) / bound if bound else 0.0,
    }


def grid_step(array: np.ndarray) -> float | None:
    """The step ``Δ`` if every value of a float32 ``array`` is exactly ``level * Δ`` in float32, else None.

    A tensor that another tool quantized uniformly (NNCodec, int8 with one scale) can then be
    stored losslessly with ``encode(array, step=grid_step(array))``. ``Δ`` is taken as the
    smallest non-zero magnitude, then checked bit for bit.

    Examples
    --------
    >>> grid_step(np.array([0.0, 0.25, -0.75, 1.0], np.float32)), grid_step(np.array([0.1, 0.25], np.float32))
    (0.25, None)
    """
    values = np.asarray(array, dtype=np.float32).reshape(-1)
    nonzero = np.abs(values[values != 0])
    if nonzero.size == 0 or not np.isfinite(values).all():
        return None
    step = np.float32(nonzero.min())
    levels = np.rint(values.astype(np.float64) / np.float64(step))
    if np.abs(levels).max() > MAX_LEVEL or not np.array_equal(levels.astype(np.float32) * step, values):
        return None
    return float(step)


def estimate_grid(values: np.ndarray, steps: np.ndarray, dead_zone: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Order-0 entropy (bits) and squared error of ``values`` quantized at each of ``steps``.

    What a rate allocator needs to compare steps without coding them: the entropy of the levels
    is close to what :mod:`~weightcodec.codecs.cabac` spends (a few percent either way).

    Parameters
    ----------
    values : ndarray of float64, shape (n,)
    steps : ndarray of float64, shape (s,)
        Positive; a step whose largest level would exceed 2^20 gets ``inf`` bits.
    dead_zone : float
        As for :func:`quantize_levels`.

    Returns
    -------
    bits, squared_error : ndarray of float64, shape (s,)

    Examples
    --------
    >>> bits, err = estimate_grid(np.array([0.0, 1.0, 1.0, 3.0]), np.array([1.0, 10.0]))
    >>> bits.round(3).tolist(), err.tolist()
    ([6.0, 0.0], [0.0, 11.0])
    """
    values = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
    return _estimate_grid(values, np.asarray(steps, dtype=np.float64), 0.5 - float(dead_zone))


# Levels beyond this are not counted by estimate_grid (the step is far finer than any budget needs).
_MAX_ESTIMATED_LEVEL = 1 << 20


@numba.njit(cache=True)
def _estimate_grid(values, steps, offset):
    n = values.shape[0]
    peak = 0.0
    for x in values:
        peak = max(peak, abs(x))
    bits = np.empty(steps.shape[0])
    errors = np.empty(steps.shape[0])
    for s in range(steps.shape[0]):
        step = steps[s]
        top = int(np.floor(peak / step + offset))
        if top > _MAX_ESTIMATED_LEVEL:
            bits[s], errors[s] = np.inf, 0.0
            continue
        counts = np.zeros(2 * top + 1, dtype=np.int64)
        err = 0.0
        for x in values:
            m = np.floor(abs(x) / step + offset)
            level = -m if x < 0 else m
            counts[int(level) + top] += 1
            d = x - level * step
            err += d * d
        total = 0.0
        for c in counts:
            if c:
                total -= c * np.log2(c / n)
        bits[s], errors[s] = total, err
    return bits, errors


# ----------------------------------------------------------------------------- helpers


def _entropy_bits(levels: np.ndarray) -> float:
    if levels.size == 0:
        return 0.0
    _, counts = np.unique(levels, return_counts=True)
    return float(-(counts * np.log2(counts / levels.size)).sum())


def _check_array(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != np.float32:
        raise EncodeError(f"uniform codec encodes float32 arrays, got {array.dtype}; convert with .astype(np.float32)")
    if not np.isfinite(array).all():
        raise EncodeError(f"uniform codec needs finite values; array holds {int((~np.isfinite(array)).sum())} NaN/Inf")
    return array


def _check_steps(step, rows: int, cols: int) -> np.ndarray:
    stored = step_matrix(np.asarray(step, dtype=np.float64), rows, cols)
    if not (np.isfinite(stored).all() and (stored > 0).all()):
        raise EncodeError(f"every step must be positive and finite as float32, got {stored.reshape(-1)[:5].tolist()}")
    return stored


def _read(
    meta: Mapping, sections: Mapping[str, bytes], shape: tuple[int, ...], *, scaled: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Validated step matrix (float32, see :func:`step_matrix`) and levels (rows x cols) of a stored tensor.

    With ``scaled`` the levels come back multiplied by their steps (the decoded weights).
    """
    if sorted(sections) != sorted(SECTIONS):
        raise CorruptFileError(f"uniform tensor has sections {sorted(sections)}; expected {list(SECTIONS)}")
    if meta.get("scale") not in SCALES:
        raise CorruptFileError(f"uniform tensor meta 'scale' is {meta.get('scale')!r}; expected one of {list(SCALES)}")
    if meta.get("coder") != LEVEL_CODER:
        raise CorruptFileError(f"uniform tensor meta 'coder' is {meta.get('coder')!r}; expected {LEVEL_CODER!r}")
    rows, cols = matrix_shape(tuple(shape))
    shapes = {"tensor": (1, 1), "row": (rows, 1), "column": (1, cols)}
    count = math.prod(shapes[meta["scale"]])
    data = bytes(sections["steps"])
    if len(data) != count * STEP_DTYPE.itemsize:
        raise CorruptFileError(
            f"uniform steps section is {len(data)} bytes; scale {meta['scale']!r} of shape {tuple(shape)} needs {count * 4}"
        )
    steps = np.frombuffer(data, dtype=STEP_DTYPE).astype(np.float32).reshape(shapes[meta["scale"]])
    if not (np.isfinite(steps).all() and (steps > 0).all()):
        raise CorruptFileError("uniform steps must be positive and finite")
    return steps, cabac_decode(bytes(sections["levels"]), rows, cols, steps if scaled else None)
